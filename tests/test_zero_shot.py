"""The zero-shot cosine of STS-B on real rows and tiny-bert, against sentences embedded alone."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest
import torch

from tests.test_probe import data as classification
from trainables.backbones import load_backbone
from trainables.data.tokenize import CACHE_DIR_ENV, encode
from trainables.prepared import PreparedData
from trainables.probe import cached_zero_shot_scores, embedder, with_probe
from trainables.zero_shot import applies, cosine, sides, zero_shot_scores

STSB = os.path.join(os.environ.get("PEFT_TUNE_DATA_DIR", "/work/shared/data"), "glue/stsb")
PAIR = ("sentence1", "sentence2")
pytestmark = pytest.mark.skipif(not os.path.isdir(STSB), reason=f"no STS-B mirror at {STSB}")


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny-bert")


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return pd.read_parquet(os.path.join(STSB, "validation.parquet")).head(60)


def stsb(frame: pd.DataFrame, tokenizer, tmp_path) -> PreparedData:
    split = [encode(part, tokenizer=tokenizer, text_columns=PAIR, max_length=128,
                    cache_dir=tmp_path / "tokens") for part in (frame[:20], frame[20:40], frame[40:])]  # fmt: skip
    return PreparedData(task="glue/stsb", task_kind="regression", metric="pearson_spearman",
                        num_labels=1, train=split[0], dev=split[1], test=split[2])  # fmt: skip


def alone(bert, tokenizer, texts: list[str]) -> np.ndarray:
    """Each text tokenised and embedded by itself (no padding, so a plain mean): the reference."""
    with torch.no_grad():
        return np.stack([bert(torch.tensor([tokenizer(t)["input_ids"]])).last_hidden_state[0]
                         .mean(0).numpy() for t in texts])  # fmt: skip


def test_sides_are_the_sentences_as_they_tokenise_alone(tiny, rows, tmp_path):
    pairs = encode(rows, tokenizer=tiny.tokenizer, text_columns=PAIR, max_length=128,
                   cache_dir=tmp_path)  # fmt: skip
    first, second = sides(pairs)
    for side, column in ((first, "sentence1"), (second, "sentence2")):
        assert side.token_type_ids is None and np.array_equal(side.labels, pairs.labels)
        for i, text in enumerate(rows[column]):
            assert side.row(i).tolist() == tiny.tokenizer(text)["input_ids"]
    with pytest.raises(ValueError, match="sentence pairs"):
        sides(first)


def test_identical_sentences_have_cosine_one_and_a_perfectly_correlated_gold_scores_one(
    tiny, rows, tmp_path
):
    same = rows.assign(sentence2=rows["sentence1"])
    data = stsb(same, tiny.tokenizer, tmp_path)
    first, second = (embedder(tiny.model)(s) for s in sides(data.dev))
    assert cosine(first, second) == pytest.approx(np.ones(len(data.dev)), abs=1e-6)
    # gold = the cosine of the two sentences embedded alone: the baseline must reproduce it exactly
    gold = rows.copy()
    gold["label"] = cosine(*(alone(tiny.model, tiny.tokenizer, rows[c].tolist()) for c in PAIR))
    gold["label"] = gold["label"].astype("float32")
    scores = zero_shot_scores(embedder(tiny.model), stsb(gold, tiny.tokenizer, tmp_path))
    assert scores == pytest.approx({"dev_zero_shot_score": 1.0, "test_zero_shot_score": 1.0},
                                   abs=1e-5)  # fmt: skip
    anti = gold.assign(label=-gold["label"])
    scores = zero_shot_scores(embedder(tiny.model), stsb(anti, tiny.tokenizer, tmp_path))
    assert scores["dev_zero_shot_score"] == pytest.approx(-1.0, abs=1e-5)


def test_it_is_cached_like_the_probe_and_every_trial_records_it(tiny, rows, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    data = stsb(rows, tiny.tokenizer, tmp_path)
    first = with_probe(data, "tiny-bert")
    (cached,) = (tmp_path / "baselines").glob("*.zero_shot.json")
    stamp = cached.stat().st_mtime_ns
    assert cached_zero_shot_scores(data, backbone="tiny-bert") == {
        k: first.reference[k] for k in ("dev_zero_shot_score", "test_zero_shot_score")}  # fmt: skip
    assert cached.stat().st_mtime_ns == stamp  # read, not computed again
    recorded = first.baselines()
    assert {"dev_zero_shot_score", "test_probe_score", "dev_majority_score"} <= set(recorded)
    assert -1.0 <= recorded["test_zero_shot_score"] <= 1.0


def test_only_sentence_pair_regression_gets_it(tiny, rows, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    data = stsb(rows, tiny.tokenizer, tmp_path)
    assert applies(data)
    single = {n: dataclasses.replace(getattr(data, n), token_type_ids=None)
              for n in ("train", "dev", "test")}  # fmt: skip
    assert not applies(dataclasses.replace(data, **single))
    assert not applies(classification())
    reference = with_probe(classification(), "tiny-bert").reference
    assert not [k for k in reference if "zero_shot" in k]
    assert not list((tmp_path / "baselines").glob("*.zero_shot.json"))
    with pytest.raises(ValueError, match="sentence-pair regression"):
        zero_shot_scores(embedder(tiny.model), classification())
