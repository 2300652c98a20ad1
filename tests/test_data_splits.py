"""Honest splits on every mirrored task, and the nested stratified few-shot sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search_spaces.errors import ConfigError
from trainables.data.loading import load_frames
from trainables.data.splits import (
    DEV_MAX,
    few_shot,
    reported_test,
    split_policy,
    stratified_order,
    task_splits,
)  # fmt: skip
from trainables.data.tasks import TASKS, get_task

MIRRORED = [name for name in TASKS if name != "ag_news"]  # ag_news train needs the hub


def _keys(frame: pd.DataFrame, columns: tuple[str, ...]) -> set[tuple[str, ...]]:
    return set(frame[list(columns)].itertuples(index=False, name=None))


@pytest.mark.parametrize("name", MIRRORED)
def test_dev_never_overlaps_the_reported_split(name: str, data_dir: Path) -> None:
    task = get_task(name)
    frames = load_frames(task, data_dir=data_dir)
    splits = task_splits(task, frames, seed=0)
    train, dev, test = (
        _keys(s, task.text_columns) for s in (splits.train, splits.dev, splits.test)
    )
    assert not dev & test and not dev & train
    if task.reported_split is None:  # carved test: one frame, so row labels must be disjoint too
        assert not train & test
        assert len(splits.train) + len(splits.dev) + len(splits.test) == len(frames["train"])
        assert not set(splits.test.index) & (set(splits.train.index) | set(splits.dev.index))
    else:
        assert splits.test.equals(frames[task.reported_split])
        assert len(splits.train) + len(splits.dev) == len(frames["train"])
    target = min(DEV_MAX, round(0.1 * (len(splits.train) + len(splits.dev))))
    assert abs(len(splits.dev) - target) <= max(5, 0.02 * target)  # whole duplicate groups
    if not task.is_regression:  # stratified over distinct texts (MPQA repeats many phrases)
        columns = list(task.text_columns)
        pool = pd.concat([splits.train, splits.dev]).drop_duplicates(columns)
        shares = pool["label"].value_counts(normalize=True)
        dev_shares = splits.dev.drop_duplicates(columns)["label"].value_counts(normalize=True)
        gap = dev_shares.sub(shares, fill_value=0)
        assert gap.abs().max() < 0.03


def test_splits_are_seeded_and_carved_test_ignores_seed(data_dir: Path) -> None:
    task = get_task("uci_sentiment/yelp")
    frames = load_frames(task, data_dir=data_dir)
    a, b, c = (task_splits(task, frames, seed=s) for s in (0, 0, 1))
    assert a.dev.index.equals(b.dev.index) and a.test.index.equals(b.test.index)
    assert not a.dev.index.equals(c.dev.index)
    assert a.test.index.equals(c.test.index)  # the reported split never moves with the seed
    assert a.test_source == "carved from train" and "seed 0" in split_policy(task)["test"]


def test_duplicates_stay_on_one_side_of_a_carve() -> None:
    texts = [f"t{i % 40}" for i in range(200)]  # every text five times
    frame = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(200)]})
    task = get_task("uci_sentiment/amazon")
    splits = task_splits(task, {"train": frame}, seed=3)
    sides = [set(s["text"]) for s in (splits.train, splits.dev, splits.test)]
    assert not sides[0] & sides[1] and not sides[0] & sides[2] and not sides[1] & sides[2]


def test_bad_split_arguments() -> None:
    task = get_task("uci_sentiment/amazon")
    frame = pd.DataFrame({"text": ["a", "b"], "label": [0, 1]})
    with pytest.raises(ConfigError, match="dev_fraction=1.5"):
        task_splits(task, {"train": frame}, dev_fraction=1.5)
    with pytest.raises(ConfigError, match="dev_max=0"):
        task_splits(task, {"train": frame}, dev_max=0)


# ---- few-shot ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imbalanced() -> pd.DataFrame:
    labels = np.repeat([0, 1, 2], [700, 250, 50])
    return pd.DataFrame({"text": [f"row {i}" for i in range(len(labels))], "label": labels})


def test_few_shot_is_stratified(imbalanced: pd.DataFrame) -> None:
    sample = few_shot(imbalanced, 128, seed=0)
    counts = sample["label"].value_counts().sort_index().to_numpy()
    assert np.all(np.abs(counts - 128 * np.array([0.7, 0.25, 0.05])) <= 1)
    assert sample.index.is_unique


def test_few_shot_nests_and_is_deterministic(imbalanced: pd.DataFrame) -> None:
    small, large = few_shot(imbalanced, 128, seed=7), few_shot(imbalanced, 512, seed=7)
    assert set(small.index) <= set(large.index)
    assert small.index.equals(large.index[:128])  # nested as a prefix
    assert small.index.equals(few_shot(imbalanced, 128, seed=7).index)
    assert set(small.index) != set(few_shot(imbalanced, 128, seed=8).index)


def test_few_shot_per_class(imbalanced: pd.DataFrame) -> None:
    eight, sixteen = (few_shot(imbalanced, k, per_class=True, seed=1) for k in (8, 16))
    assert eight["label"].value_counts().to_dict() == {0: 8, 1: 8, 2: 8}
    assert set(eight.index) <= set(sixteen.index)
    with pytest.raises(ConfigError, match="k=51 per class is more than the 50 rows of label 2"):
        few_shot(imbalanced, 51, per_class=True, seed=1)


def test_few_shot_refuses_bad_k(imbalanced: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="k=1001 is larger than the 1000 rows"):
        few_shot(imbalanced, 1001, seed=0)
    with pytest.raises(ConfigError, match="k=0"):
        few_shot(imbalanced, 0, seed=0)


def test_few_shot_regression_samples_uniformly() -> None:
    frame = pd.DataFrame({"text": list("abcdefgh"), "label": np.linspace(0, 5, 8)})
    assert set(few_shot(frame, 3, seed=0).index) <= set(few_shot(frame, 6, seed=0).index)
    with pytest.raises(ConfigError, match="per_class"):
        few_shot(frame, 2, per_class=True, seed=0)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=8),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_every_prefix_is_stratified(sizes: list[int], seed: int) -> None:
    labels = np.repeat(np.arange(len(sizes)), sizes)
    order = stratified_order(labels, seed=seed)
    assert sorted(order.tolist()) == list(range(len(labels)))
    counts = np.cumsum(np.eye(len(sizes))[labels[order]], axis=0)
    quota = np.arange(1, len(labels) + 1)[:, None] * np.array(sizes)[None, :] / len(labels)
    assert np.abs(counts - quota).max() < 2  # within two rows of proportional (see the docstring)


def test_small_classes_of_one_size_interleave_instead_of_queueing():
    """Five singletons and a class of 15 (found by hypothesis): the singletons once all sat at the
    middle, letting the large class run two rows ahead of its quota; now they spread."""
    sizes = [1, 1, 1, 1, 1, 15]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    order = stratified_order(labels, seed=0)
    counts = np.cumsum(np.eye(len(sizes))[labels[order]], axis=0)
    quota = np.arange(1, len(labels) + 1)[:, None] * np.array(sizes)[None, :] / len(labels)
    assert np.abs(counts - quota).max() < 1.2


def test_reported_test_alone(data_dir: Path) -> None:
    # ag_news's train is hub-only; its test still loads on its own
    assert len(reported_test(get_task("ag_news"), data_dir=data_dir)) == 7_600
    task = get_task("sentences/subj")
    carved = task_splits(task, load_frames(task, data_dir=data_dir), seed=5).test
    assert reported_test(task, data_dir=data_dir).index.equals(carved.index)
