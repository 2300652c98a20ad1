"""Arms of a designed study as data: one row per arm (a setting of a few keys), its score over seeds,
size and time; the efficiency frontier over arms.

An arm is a combination of ``keys`` (``placement`` and ``layers``; ``task``, ``budget_params`` and
``method``; ...); of the configurations an arm ran (its learning rates), the one chosen on dev
stands for it (:func:`analysis.selection.select_configs`). Only completed trials count; scores are
in points.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.pareto import ParetoInfo, pareto_front
from analysis.selection import POINTS, SELECT_BY, not_completed, paired, select_configs, with_seed
from analysis.stats import paired_bootstrap
from analysis.tables import Table

SPREAD = ("mean", "std", "n_seeds", "dev_mean")
# measured per trial; the table shows each arm's median (counts) or mean (times)
MEDIAN = ("trainable_params", "added_params")
MEAN = ("wall_s", "train_samples_per_s")


def arm_label(row: pd.Series, keys: Sequence[str]) -> str:
    """``placement=all layers=3,4,5``; a key left unset (None) is omitted."""
    parts = [f"{k}={_text(row[k])}" for k in keys if not missing(row.get(k))]
    return " ".join(parts) or "default"


def _text(value: object) -> str:
    """Whole floats as ints: a column with gaps turns layer ``3`` into ``3.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def missing(value: object) -> bool:
    """None or NaN: a param or metric a trial did not log (pandas fills the gaps with NaN)."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def arm_table(trials: pd.DataFrame, *, keys: Sequence[str], score: str) -> Table:
    """Per arm, of its configuration chosen on dev (``lr``: the rate dev chose): mean and std of
    ``score`` over its completed seeds (points), ``n_seeds``, the mean dev score (``dev_mean``,
    points: what chooses between arms), the median parameter counts and the mean wall time and
    throughput; sorted by the keys."""
    keys = list(keys)
    cols = ["arm", *keys, "lr", *SPREAD, *MEDIAN, *MEAN]
    missing = tuple(c for c in (*keys, score) if c not in trials.columns)
    done = with_seed(select_configs(trials, keys)) if not missing else trials.iloc[0:0]
    if missing or done.empty:
        return Table("arms", pd.DataFrame(columns=cols), len(not_completed(trials)), missing)
    done = done.assign(_key=done[keys].map(str).agg("|".join, axis=1))
    rows = []
    for _, g in done.groupby("_key", sort=False):
        first = g.iloc[0]
        values = g[score].dropna() * POINTS
        row = {"arm": arm_label(first, keys), **{k: first[k] for k in keys}, "lr": first.get("lr"),
               "mean": values.mean(), "std": values.std(ddof=1) if len(values) > 1 else np.nan,
               "n_seeds": int(values.size),
               "dev_mean": g[SELECT_BY].mean() * POINTS if SELECT_BY in g else np.nan}  # fmt: skip
        row.update({c: g[c].median() if c in g else np.nan for c in MEDIAN})
        row.update({c: g[c].mean() if c in g else np.nan for c in MEAN})
        rows.append(row)
    data = pd.DataFrame(rows, columns=cols)
    return Table("arms", data.reset_index(drop=True), len(not_completed(trials)))


def arm_front(table: Table, *, x: str, x_mode: str = "min") -> ParetoInfo:
    """The arms on the frontier of mean dev score (max) against ``x`` (``trainable_params``,
    ``wall_s``...), each with its reported ``mean``; an arm without ``x`` is listed as excluded."""
    data = table.data.assign(
        trial_id=table.data["arm"],
        method=table.data["arm"],
        status="completed",
        fidelity=1.0,
        test_score=table.data["mean"],
    )
    return pareto_front(data, x=x, y="dev_mean", x_mode=x_mode, y_mode="max")


def paired_deltas(
    trials: pd.DataFrame, *, arm: str, control: str, score: str, by: Sequence[str] = ()
) -> pd.DataFrame:
    """Each arm (a value of column ``arm``) minus ``control``, paired on seeds: mean difference
    (points), 95% bootstrap interval and pairs, as :mod:`analysis.hypotheses` computes them."""
    cols = [*by, "arm", "delta", "ci_low", "ci_high", "n_pairs"]
    if arm not in trials.columns or score not in trials.columns:
        return pd.DataFrame(columns=cols)
    rows = []
    frame = trials.assign(method=trials[arm].astype(str))
    for name in sorted(set(frame["method"]) - {control}):
        pairs = paired(frame, score, treatment=name, control=control, by=list(by))
        if pairs.empty:
            continue
        groups = pairs[list(by)].map(str).agg("|".join, axis=1) if by else None
        estimate = paired_bootstrap(pairs["diff"].to_numpy(), groups)
        rows.append({**({k: pairs[k].iloc[0] for k in by}), "arm": name, "delta": estimate.value,
                     "ci_low": estimate.ci_low, "ci_high": estimate.ci_high,
                     "n_pairs": len(pairs)})  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


__all__ = ["arm_front", "arm_label", "arm_table", "missing", "paired_deltas"]
