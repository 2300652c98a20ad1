"""Close calls on dev: an arm whose chosen configuration a runner-up matched on some seed.

A seeds phase runs each arm's best configurations on every seed and dev chooses the best mean
(:func:`analysis.selection.select_configs`). When the runner-up scored at least as well on dev on
some seed, the carved dev split did not separate the two: the tables report the chosen one, and
this lists the pair with both test scores beside them (reported, not chosen), so that a reader
sees a lead that rests on such a choice (docs/STUDIES.md, Known limits).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from analysis.arms import arm_label
from analysis.selection import NOT_CONFIG, POINTS, SELECT_BY, candidates
from tuner.tracking import PARAM_KEYS

COLUMNS = ["arm", "chosen", "runner_up", "dev_chosen", "dev_runner_up", "seeds_matched",
           "test_chosen", "test_runner_up"]  # fmt: skip
DIFFERS = ("lr",)  # what tells a grid arm's candidates apart (a search's: any knob)


def arm_keys(trials: pd.DataFrame, *, grid: bool) -> list[str]:
    """What one arm shares: a grid arm its whole configuration but the learning rate, a searched
    study's arm its method (and task, where a study holds several)."""
    if not grid:
        return [k for k in ("task", "method") if k in trials.columns]
    return [c for c in PARAM_KEYS
            if c in trials.columns and c not in NOT_CONFIG and c not in DIFFERS]  # fmt: skip


def close_calls(trials: pd.DataFrame, *, grid: bool, score: str = "test_score") -> pd.DataFrame:
    """Per arm with two or more candidates on two or more shared seeds: the chosen configuration
    and the runner-up on dev, their mean dev (points), on how many of the seeds the runner-up
    scored at least as well (``"2 of 3"``), and their mean ``score`` (points); only arms where it
    did on one seed or more."""
    by = arm_keys(trials, grid=grid)
    done, ranked = candidates(trials, by)
    rows: list[dict[str, Any]] = []
    if ranked.empty or not by:
        return pd.DataFrame(columns=COLUMNS)
    named = _naming(done, by)
    for _, group in ranked.groupby(by, dropna=False, sort=False):
        seeds = group["_seeds"].iloc[0]
        if len(group) < 2 or len(seeds) < 2:
            continue
        chosen, runner = (done[(done["_config"] == c) & done["seed"].isin(seeds)]
                          .set_index("seed").sort_index() for c in group["_config"].iloc[:2])  # fmt: skip
        matched = int((runner[SELECT_BY] >= chosen[SELECT_BY] - 1e-12).sum())
        if matched == 0:
            continue
        first = chosen.iloc[0]
        rows.append({"arm": arm_label(first, named), "chosen": _differs(first, runner.iloc[0]),
                     "runner_up": _differs(runner.iloc[0], first),
                     "dev_chosen": chosen[SELECT_BY].mean() * POINTS,
                     "dev_runner_up": runner[SELECT_BY].mean() * POINTS,
                     "seeds_matched": f"{matched} of {len(seeds)}",
                     "test_chosen": _mean(chosen, score), "test_runner_up": _mean(runner, score)})  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def _naming(done: pd.DataFrame, by: list[str]) -> list[str]:
    """The arm keys that tell this study's arms apart (the method always)."""
    varying = [k for k in by if k != "method" and done[k].astype(str).nunique() > 1]
    return [k for k in ("method",) if k in by] + varying


def _differs(row: pd.Series, other: pd.Series) -> str:
    """The knobs in which ``row``'s configuration differs from ``other``'s, as ``k=v``."""
    keys = [c for c in PARAM_KEYS if c in row.index and c not in NOT_CONFIG]
    parts = [f"{k}={_text(row[k])}" for k in keys if str(row[k]) != str(other[k])]
    return " ".join(parts) or "(same)"


def _text(value: object) -> str:
    return f"{value:.2g}" if isinstance(value, float) else str(value)


def _mean(rows: pd.DataFrame, score: str) -> float:
    return float(rows[score].mean() * POINTS) if score in rows else float("nan")


__all__ = ["arm_keys", "close_calls"]
