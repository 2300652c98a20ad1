"""Metrics against hand-computed values and against sklearn / scipy as references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from search_spaces.errors import ConfigError
from trainables.metrics import METRICS, Metric, compute, get_metric, register_metric


def one_hot_logits(preds: list[int], num_classes: int) -> np.ndarray:
    return np.eye(num_classes)[preds]


def test_hand_computed_binary_values():
    # preds 1 1 0 0 1, labels 1 0 0 1 1: tp=2 fp=1 fn=1 tn=1
    logits, labels = one_hot_logits([1, 1, 0, 0, 1], 2), np.array([1, 0, 0, 1, 1])
    assert compute("accuracy", logits, labels) == {"score": 0.6, "accuracy": 0.6}
    f1 = compute("f1", logits, labels)
    assert f1["score"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1)) and f1["accuracy"] == 0.6
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert compute("mcc", logits, labels)["score"] == pytest.approx(1 / 6)
    # class 0: tp=1 fp=1 fn=1 -> 0.5; class 1: 2/3 -> macro (0.5 + 2/3) / 2
    assert compute("macro_f1", logits, labels)["score"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_hand_computed_correlations():
    out = compute(
        "pearson_spearman", np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 5.0])
    )
    # ranks agree exactly; Pearson: deviations (-1.5, -.5, .5, 1.5) and (-1.75, -.75, .25, 2.25),
    # cross products 6.5, squares 5 and 8.75
    pearson = 6.5 / np.sqrt(5 * 8.75)
    assert out["spearman"] == pytest.approx(1.0)
    assert out["pearson"] == pytest.approx(pearson)
    assert out["score"] == pytest.approx((1 + pearson) / 2)


@pytest.mark.parametrize("num_classes", [2, 3, 6])
@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(num_classes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=200)
    logits = rng.normal(size=(200, num_classes))
    logits[np.arange(200), labels] += rng.uniform(0, 2)  # better than chance, not perfect
    preds = logits.argmax(1)
    assert compute("accuracy", logits, labels)["score"] == pytest.approx(
        sk.accuracy_score(labels, preds)
    )
    assert compute("macro_f1", logits, labels)["score"] == pytest.approx(
        sk.f1_score(labels, preds, average="macro")
    )
    assert compute("mcc", logits, labels)["score"] == pytest.approx(
        sk.matthews_corrcoef(labels, preds)
    )
    if num_classes == 2:
        assert compute("f1", logits, labels)["score"] == pytest.approx(sk.f1_score(labels, preds))


def test_macro_f1_averages_only_classes_seen_like_sklearn():
    # 4 logit columns, class 3 never labelled nor predicted
    logits, labels = one_hot_logits([0, 1, 2, 2], 4), np.array([0, 1, 1, 2])
    expected = sk.f1_score(labels, logits.argmax(1), average="macro")
    assert compute("macro_f1", logits, labels)["score"] == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=300).astype(np.float32)  # STS-B-like ties
    outputs = labels + rng.normal(scale=1.5, size=300)
    out = compute("pearson_spearman", outputs[:, None], labels)  # [N, 1] as a regression head gives
    assert out["pearson"] == pytest.approx(stats.pearsonr(outputs, labels)[0])
    assert out["spearman"] == pytest.approx(stats.spearmanr(outputs, labels)[0])


def test_undefined_values_are_zero_not_nan():
    labels = np.array([0, 0, 0, 0])
    logits = one_hot_logits([0, 0, 0, 0], 2)
    assert compute("f1", logits, labels)["score"] == 0.0  # no positives at all
    assert compute("mcc", logits, labels)["score"] == 0.0
    constant = compute("pearson_spearman", np.ones(5), np.arange(5.0))
    assert constant == {"score": 0.0, "pearson": 0.0, "spearman": 0.0}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_registered_metric_scores_perfect_predictions_highest(name):
    rng = np.random.default_rng(0)
    if get_metric(name).regression:
        labels = rng.normal(size=50)
        perfect, noisy = labels, labels + rng.normal(size=50)
    else:
        labels = rng.integers(0, 2, size=50)
        perfect, noisy = one_hot_logits(labels, 2), rng.normal(size=(50, 2))
    best, worse = compute(name, perfect, labels), compute(name, noisy, labels)
    assert best["score"] == pytest.approx(1.0) and worse["score"] < best["score"]
    assert all(isinstance(v, float) for v in best.values())


def test_bad_input_is_refused_with_the_allowed_values():
    with pytest.raises(ConfigError, match=r"metric='acc' is not one of: accuracy, f1"):
        compute("acc", np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(ConfigError, match="class logits"):
        compute("accuracy", np.zeros(4), np.zeros(4))
    with pytest.raises(ConfigError, match="regression outputs"):
        compute("pearson_spearman", np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(ConfigError, match="binary"):
        compute("f1", np.zeros((4, 3)), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="predictions for"):
        compute("accuracy", np.zeros((3, 2)), np.zeros(4))


def test_registry_refuses_duplicates_and_bad_names():
    with pytest.raises(ConfigError, match="already registered"):
        register_metric(Metric("accuracy", METRICS["accuracy"].fn))
    with pytest.raises(ConfigError, match="identifier"):
        register_metric(Metric("bad name", METRICS["accuracy"].fn))


def test_majority_class_scores_and_top_class_share():
    from trainables.metrics import majority_score, top_class_share

    train, dev = np.array([0, 0, 0, 1]), np.array([0, 1, 1, 1])
    assert majority_score("accuracy", train, dev) == pytest.approx(0.25)
    assert majority_score("mcc", train, dev) == 0.0  # one class for everything: undefined -> 0
    assert majority_score("f1", np.array([1, 1, 0]), dev) == pytest.approx(2 * 0.75 / 1.75)
    assert majority_score("pearson_spearman", np.array([0.1, 0.9]), np.array([0.0, 1.0])) == 0.0
    assert top_class_share(np.array([[0.0, 1.0], [0.2, 0.9], [1.0, 0.0]])) == pytest.approx(2 / 3)
