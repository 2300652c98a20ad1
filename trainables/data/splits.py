"""Honest splits: a dev set for selection carved from train, a reported test set never touched.

Every task ends up with ``train`` (fit), ``dev`` (early stopping, search) and ``test`` (the
number that is quoted):

* ``test`` is the task's reported split (official test if it has labels, else official
  validation). Single-split data sets (sentences/*, uci_sentiment/*, user folders with only
  train) get a stratified test carve with a fixed seed that ``seed`` does not move.
* ``dev`` is carved from the official train with ``seed``, stratified for classification.
  An official validation split that is not reported is left unused, so every task's dev is made
  the same way.
* Carves take whole groups of identical rows: a text (or sentence pair) never sits on both sides
  of a carve, and a train row that duplicates a reported-test row is never put in dev (it stays
  in train, as the official split has it).

Stratified orders are Webster (Sainte-Laguë) apportionments rather than largest remainder:
largest remainder is not house-monotone (the Alabama paradox: more seats can mean fewer for one
class), so its k-subsets would not nest. Here every prefix of one seeded order is a sample, so
the 128-example few-shot set is the first 128 rows of the 512-example one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from search_spaces.errors import ConfigError
from trainables.data.loading import load_frames
from trainables.data.tasks import Task

DEV_FRACTION = 0.1
DEV_MAX = 2000  # enough for a stable metric; larger dev sets only slow every evaluation down
CARVED_TEST_FRACTION = 0.1  # single-split data sets: 10% test, then dev from the rest (~80/10/10)
TEST_CARVE_SEED = 0  # fixed: the reported split of a single-split task never moves with --seed
_KEY_SEPARATOR = "\x1f"  # joins sentence pairs into one duplicate key; never occurs in text
_WEBSTER_OFFSET = 0.5  # Sainte-Laguë divisors 0.5, 1.5, 2.5, ...


@dataclass(frozen=True, eq=False)
class Splits:
    """Three disjoint frames. Row index labels are those of the frame each row came from."""

    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame
    test_source: str  # "official test", "official validation" or "carved from train"

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}


def split_policy(task: Task) -> dict[str, str]:
    """Where each honest split of ``task`` comes from, in words (for docs and ``describe``)."""
    reported = task.reported_split
    dev = f"(at most {DEV_MAX}), seeded, stratified"
    if reported is None:
        return {
            "train": "the single split minus test and dev",
            "dev": f"{DEV_FRACTION:.0%} of the rest {dev}",
            "test": f"{CARVED_TEST_FRACTION:.0%} of the single split, stratified, seed {TEST_CARVE_SEED}",
            "unused": "-",
        }
    unused = [s for s in task.splits if s not in ("train", reported)]
    return {
        "train": "official train minus dev",
        "dev": f"{DEV_FRACTION:.0%} of train {dev}",
        "test": f"official {reported}",
        "unused": ", ".join(f"official {s}" for s in unused) or "-",
    }


def task_splits(
    task: Task,
    frames: dict[str, pd.DataFrame],
    *,
    dev_fraction: float = DEV_FRACTION,
    dev_max: int = DEV_MAX,
    seed: int = 0,
) -> Splits:
    """Honest train/dev/test for ``task`` from its official ``frames`` (see module docstring).

    ``dev`` has about ``min(dev_max, round(dev_fraction * n))`` rows: carves take whole groups
    of identical texts and stop at the first group that reaches the count.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ConfigError(f"dev_fraction={dev_fraction!r} must be in (0, 1)")
    if not isinstance(dev_max, int) or dev_max < 1:
        raise ConfigError(f"dev_max={dev_max!r} must be a positive integer")
    reported = task.reported_split
    missing = [s for s in ("train", reported) if s is not None and s not in frames]
    if missing:
        raise ConfigError(f"task {task.name}: frames lack {missing}; got {sorted(frames)}")
    stratify = not task.is_regression
    if reported is None:
        pool = frames["train"]
        n_test = round(CARVED_TEST_FRACTION * len(pool))
        in_test = _carve(
            pool, n_test, seed=TEST_CARVE_SEED, stratify=stratify, columns=task.text_columns
        )
        test, rest, source = pool[in_test], pool[~in_test], "carved from train"
    else:
        test, rest, source = frames[reported], frames["train"], f"official {reported}"
    n_dev = min(dev_max, round(dev_fraction * len(rest)))
    test_keys = set(_keys(test, task.text_columns))
    in_dev = _carve(
        rest, n_dev, seed=seed, stratify=stratify, columns=task.text_columns, exclude=test_keys
    )
    return Splits(train=rest[~in_dev], dev=rest[in_dev], test=test, test_source=source)


def reported_test(task: Task, *, data_dir: str | Path | None = None, seed: int = 0) -> pd.DataFrame:
    """The honest test split of ``task`` alone (e.g. an extra evaluation set).

    Tasks with an official reported split load only that split, so ag_news's test works without
    its hub-only train; single-split tasks load train and take the fixed-seed carve.
    """
    reported = task.reported_split
    if reported is not None:
        return load_frames(task, data_dir=data_dir, splits=(reported,))[reported]
    return task_splits(task, load_frames(task, data_dir=data_dir), seed=seed).test


def stratified_order(labels: np.ndarray, *, seed: int, stratify: bool = True) -> np.ndarray:
    """A seeded permutation of ``range(len(labels))`` whose every prefix is stratified.

    Rows of each class are shuffled with one seeded permutation per class; the i-th row of a
    class of size n is then placed at (i + o) / n (Webster's o = 0.5), where the J classes of one
    size share the step: the j-th takes o = (j + 0.5) / J, so five singleton classes sit at 0.1,
    0.3, ... 0.9 instead of all at 0.5 (which let a large class run ~(J - 1) / 2 rows ahead of its
    quota). Each prefix of length k holds each class within two rows of ``k * n_class / N`` (worst
    seen 1.67 over 60,000 random mixes of up to 8 classes; one row for two classes).
    """
    rng = np.random.default_rng(seed)
    if not stratify:
        return rng.permutation(len(labels))
    _, classes = np.unique(np.asarray(labels), return_inverse=True)
    pools = [
        rng.permutation(np.flatnonzero(classes == c)) for c in range(classes.max(initial=-1) + 1)
    ]
    if not pools:
        return np.zeros(0, dtype=np.int64)
    rows = np.concatenate(pools)
    sizes = np.array([len(p) for p in pools])
    offset = np.zeros(len(sizes))
    for n in np.unique(sizes):  # classes of one size interleave within one Webster step
        same = np.flatnonzero(sizes == n)
        offset[same] = (np.arange(len(same)) + _WEBSTER_OFFSET) / len(same)
    cls = np.repeat(np.arange(len(pools)), sizes)
    rank = np.concatenate([np.arange(n) for n in sizes])
    return rows[np.lexsort((cls, (rank + offset[cls]) / sizes[cls]))]


def few_shot(frame: pd.DataFrame, k: int, *, per_class: bool = False, seed: int) -> pd.DataFrame:
    """``k`` stratified rows of ``frame`` (``k`` per class with ``per_class``), deterministic
    for ``seed`` and nested: for one seed the k-row set is the first k rows of any larger one.

    Regression frames (float labels) are sampled uniformly; ``per_class`` needs classes.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k={k!r} must be a positive integer")
    labels = frame["label"].to_numpy()
    regression = np.issubdtype(labels.dtype, np.floating)
    if per_class:
        if regression:
            raise ConfigError("per_class=True needs class labels; this frame is a regression")
        return frame.iloc[_per_class_order(labels, k, seed=seed)]
    if k > len(frame):
        raise ConfigError(f"k={k} is larger than the {len(frame)} rows available")
    return frame.iloc[stratified_order(labels, seed=seed, stratify=not regression)[:k]]


def _per_class_order(labels: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values, classes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    short = [(v, int(c)) for v, c in zip(values, counts, strict=True) if c < k]
    if short:
        label, count = short[0]
        raise ConfigError(f"k={k} per class is more than the {count} rows of label {label}")
    pools = [rng.permutation(np.flatnonzero(classes == c))[:k] for c in range(len(values))]
    # round robin: rank 0 of every class, then rank 1, ... so smaller k are prefixes
    return np.stack(pools, axis=1).reshape(-1)


def _keys(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    keys = frame[columns[0]].astype(str)
    for column in columns[1:]:
        keys = keys + _KEY_SEPARATOR + frame[column].astype(str)
    return keys


def _carve(
    frame: pd.DataFrame,
    n: int,
    *,
    seed: int,
    stratify: bool,
    columns: tuple[str, ...],
    exclude: set[str] | None = None,
) -> np.ndarray:
    """A boolean mask over ``frame``: about ``n`` rows taken as whole groups of identical text.

    Distinct texts (not rows, so frequent texts are not favoured) are put in a stratified order,
    labelled by their first row; groups are taken in that order until ``n`` rows are covered.
    Texts in ``exclude`` are never taken.
    """
    keys = _keys(frame, columns)
    firsts = np.flatnonzero(~keys.duplicated().to_numpy())
    labels = frame["label"].to_numpy()[firsts]
    ordered = keys.iloc[firsts[stratified_order(labels, seed=seed, stratify=stratify)]]
    if exclude:
        ordered = ordered[~ordered.isin(exclude)]
    group_rows = ordered.map(keys.value_counts()).to_numpy()
    covered = np.cumsum(group_rows)
    available = int(covered[-1]) if len(covered) else 0
    if n > available:
        raise ConfigError(f"cannot carve {n} rows from {available} eligible rows")
    taken = int(np.searchsorted(covered, n)) + 1 if n > 0 else 0
    return keys.isin(set(ordered.iloc[:taken])).to_numpy()
