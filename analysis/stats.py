"""Seeded bootstrap confidence intervals for paired differences (numpy only, vectorised)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 10_000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile bootstrap interval (NaN bounds with fewer than 2 units).

    ``n`` counts the pairs; ``units`` what was resampled (``unit`` names it): pairs within their
    groups, or whole groups when some group has a single pair.
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    units: int = 0
    unit: str = "pairs"


def _groups(values: np.ndarray, groups: Sequence | None) -> list[np.ndarray]:
    if groups is None:
        return [values]
    keys = np.asarray(groups, dtype=object)
    return [values[keys == k] for k in dict.fromkeys(keys.tolist())]


def _std(x: np.ndarray) -> np.ndarray:
    return x.std(axis=-1, ddof=1)


def _interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return float(lo), float(hi)


def paired_bootstrap(
    diffs: Sequence[float],
    groups: Sequence | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Estimate:
    """Mean of per-group mean differences, with a stratified bootstrap CI.

    Within each group (a task, a training size...) the paired differences are resampled with
    replacement; the statistic is the unweighted mean of the group means, so every group counts
    once however many seeds it has. ``groups=None`` is one group: the plain mean. A group with a
    single pair has no spread to resample, so then the group means are resampled instead (the
    groups become the units).
    """
    values = np.asarray(diffs, dtype=float)
    if values.size == 0:
        return Estimate(np.nan, np.nan, np.nan, 0, 0)
    parts = _groups(values, groups)
    value = float(np.mean([p.mean() for p in parts]))
    if min(p.size for p in parts) < 2:
        parts, unit = [np.array([p.mean() for p in parts])], "groups"
    else:
        unit = "pairs"
    units = sum(p.size for p in parts)
    if units < 2:
        return Estimate(value, np.nan, np.nan, int(values.size), units, unit)
    rng = np.random.default_rng(seed)
    means = np.zeros(n_resamples)
    for part in parts:
        idx = rng.integers(0, part.size, size=(n_resamples, part.size))
        means += part[idx].mean(axis=1)
    lo, hi = _interval(means / len(parts), level)
    return Estimate(value, lo, hi, int(values.size), units, unit)


def paired_spread_bootstrap(
    blocks: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Estimate:
    """Mean over blocks of ``std(control) - std(treatment)`` (sample std over seeds), with a CI from
    resampling each block's seeds jointly (a seed is drawn for both arms at once, keeping pairs).

    ``blocks``: per block (a training size), the two arms' scores on the same seeds, in order.
    A positive value means the treatment varies less across seeds.
    """
    blocks = [(np.asarray(c, float), np.asarray(t, float)) for c, t in blocks]
    if not blocks:
        return Estimate(np.nan, np.nan, np.nan, 0, 0, "sizes")
    value = float(np.mean([_std(c) - _std(t) for c, t in blocks]))
    rng = np.random.default_rng(seed)
    total = np.zeros(n_resamples)
    for control, treatment in blocks:
        idx = rng.integers(0, control.size, size=(n_resamples, control.size))
        total += _std(control[idx]) - _std(treatment[idx])
    lo, hi = _interval(total / len(blocks), level)
    return Estimate(value, lo, hi, len(blocks), len(blocks), "sizes")
