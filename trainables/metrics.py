"""Evaluation metrics by name, in numpy/scipy (no sklearn at run time).

:func:`compute` returns the primary score under ``"score"`` plus its components, e.g.
``{"score": 0.81, "f1": 0.81, "accuracy": 0.84}``. Every metric here is higher-is-better
(``mode="max"`` in Ray's vocabulary). An undefined value (a 0/0 F1, MCC or correlation, as with a
constant prediction) is 0.0, like sklearn's ``zero_division=0``, so no NaN reaches the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from search_spaces.errors import ConfigError, one_of

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


@dataclass(frozen=True)
class Metric:
    """A named metric over ``(logits, labels)``; ``regression`` metrics take logits of shape [N] or
    [N, 1], the others class logits [N, C >= 2] and integer labels."""

    name: str
    fn: MetricFn
    regression: bool = False
    mode: str = "max"


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS`; a taken or empty name is refused."""
    if not metric.name or not metric.name.isidentifier():
        raise ConfigError(f"metric name {metric.name!r} must be a non-empty identifier")
    if metric.name in METRICS:
        raise ConfigError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise one_of("metric", name, sorted(METRICS))
    return METRICS[name]


def compute(metric: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``metric`` of ``logits`` against ``labels``: ``{"score": primary, <component>: value, ...}``."""
    spec = get_metric(metric)
    logits, labels = np.asarray(logits), np.asarray(labels)
    if spec.regression:
        if logits.ndim == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]
        if logits.ndim != 1:
            raise ConfigError(f"metric={metric!r} needs regression outputs [N], got {logits.shape}")
    elif logits.ndim != 2 or logits.shape[1] < 2:
        raise ConfigError(f"metric={metric!r} needs class logits [N, C>=2], got {logits.shape}")
    if len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"{len(logits)} predictions for {len(labels)} labels (need equal, >= 1)")
    return {name: float(value) for name, value in spec.fn(logits, labels).items()}


def top_class_share(logits: np.ndarray) -> float:
    """The share of the most frequent predicted class: 1.0 when one class is predicted for
    everything, as by a model that did not learn."""
    return float(np.bincount(np.asarray(logits).argmax(axis=1)).max() / len(logits))


def majority_score(metric: str, train_labels: np.ndarray, labels: np.ndarray) -> float:
    """The score of always answering the most frequent class of ``train_labels`` (for a
    regression metric: always the mean, whose correlation is 0). A trial at or below it did not
    learn (the study rules: a score at the majority-class baseline is a bug until shown otherwise)."""
    spec = get_metric(metric)
    labels = np.asarray(labels)
    if spec.regression:
        return compute(metric, np.full(len(labels), np.mean(train_labels)), labels)["score"]
    majority = int(np.bincount(np.asarray(train_labels, dtype=np.int64)).argmax())
    classes = max(int(labels.max()), majority, 1) + 1
    logits = np.zeros((len(labels), classes))
    logits[:, majority] = 1.0
    return compute(metric, logits, labels)["score"]


def _divide(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with 0 where den == 0 (an undefined ratio counts as 0, as in sklearn)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num * den), where=den != 0)


def _confusion(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confusion matrix [true, predicted] over classes 0..max(C-1, labels)."""
    preds = logits.argmax(axis=1)
    n = max(logits.shape[1], int(labels.max()) + 1)
    return np.bincount(labels.astype(np.int64) * n + preds, minlength=n * n).reshape(n, n)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    acc = float(np.mean(logits.argmax(axis=1) == labels))
    return {"score": acc, "accuracy": acc}


def _per_class_f1(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm)
    return _divide(2 * tp, cm.sum(axis=0) + cm.sum(axis=1))


def _macro_f1(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    cm = _confusion(logits, labels)
    # average over the classes that occur as a label or a prediction (sklearn's default labels)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    f1 = float(_per_class_f1(cm)[present].mean())
    return {"score": f1, "macro_f1": f1, "accuracy": float(np.trace(cm) / cm.sum())}


def _binary_f1(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    cm = _confusion(logits, labels)
    if len(cm) != 2:
        raise ConfigError(f"metric='f1' is binary, got {len(cm)} classes: use macro_f1")
    f1 = float(_per_class_f1(cm)[1])  # the positive class is 1
    return {"score": f1, "f1": f1, "accuracy": float(np.trace(cm) / cm.sum())}


def _mcc(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Matthews correlation for any number of classes (Gorodkin 2004's R_K)."""
    cm = _confusion(logits, labels).astype(np.float64)
    n, correct = cm.sum(), np.trace(cm)
    predicted, true = cm.sum(axis=0), cm.sum(axis=1)
    num = correct * n - predicted @ true
    den = np.sqrt(n**2 - predicted @ predicted) * np.sqrt(n**2 - true @ true)
    mcc = float(_divide(num, den))
    return {"score": mcc, "mcc": mcc, "accuracy": float(correct / n)}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    return float(_divide(x @ y, np.sqrt((x @ x) * (y @ y))))


def _pearson_spearman(outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    x, y = outputs.astype(np.float64), labels.astype(np.float64)
    pearson = _pearson(x, y)
    spearman = _pearson(rankdata(x), rankdata(y))  # Spearman = Pearson of ranks (ties averaged)
    return {"score": (pearson + spearman) / 2, "pearson": pearson, "spearman": spearman}


register_metric(Metric("accuracy", _accuracy))
register_metric(Metric("macro_f1", _macro_f1))
register_metric(Metric("f1", _binary_f1))
register_metric(Metric("mcc", _mcc))
register_metric(Metric("pearson_spearman", _pearson_spearman, regression=True))
