"""The head-only baseline: a linear probe on the frozen backbone, computed once and cached."""

from __future__ import annotations

import numpy as np

from tests.test_loop import DEV, TRAIN
from trainables.backbones import load_backbone
from trainables.data.tokenize import CACHE_DIR_ENV
from trainables.metrics import majority_score
from trainables.prepared import PreparedData
from trainables.probe import cached_probe_scores, probe_scores, with_probe


def data() -> PreparedData:
    return PreparedData(task="synthetic", task_kind="classification", metric="accuracy",
                        num_labels=2, train=TRAIN, dev=DEV, test=DEV)  # fmt: skip


def test_the_probe_learns_what_the_frozen_features_hold_and_beats_the_majority_class():
    bert = load_backbone("tiny-bert").model
    scores = probe_scores(bert, data())
    assert set(scores) == {"dev_probe_score", "test_probe_score"}
    majority = majority_score("accuracy", TRAIN.labels, DEV.labels)
    assert scores["dev_probe_score"] > majority + 0.1  # the marker token shows in the mean
    assert scores == probe_scores(bert, data())  # seeded: the same head every time


def test_the_probe_is_cached_per_backbone_and_rows_and_every_trial_records_it(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    first = with_probe(data(), "tiny-bert")
    (cached,) = (tmp_path / "baselines").glob("*.json")
    stamp = cached.stat().st_mtime_ns
    assert cached_probe_scores(data(), backbone="tiny-bert") == first.reference
    assert cached.stat().st_mtime_ns == stamp  # read, not computed again
    assert {"dev_probe_score", "test_probe_score", "dev_majority_score"} <= set(first.baselines())
    fewer = PreparedData(**{**vars(data()), "train": TRAIN.select(np.arange(100))})
    with_probe(fewer, "tiny-bert")
    assert len(list((tmp_path / "baselines").glob("*.json"))) == 2  # other rows, another entry


def test_a_trial_on_a_subset_records_the_probe_of_that_many_rows_or_none(tmp_path, monkeypatch):
    """E2's 128-example arm is held to a probe trained on 128 rows, not on the whole split."""
    from trainables.prepared import subsample

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    full = with_probe(data(), "tiny-bert", sizes=(40,))
    forty = subsample(full, 40, seed=2)  # a trial's own subset (its seed), the size's probe
    assert forty.reference == full.probes_at[40] != full.reference
    assert forty.baselines()["dev_probe_score"] == full.probes_at[40]["dev_probe_score"]
    assert "dev_probe_score" not in subsample(full, 30, seed=0).reference  # no probe at 30 rows
    assert subsample(full, None, seed=0).reference == full.reference
