"""E5: what each method costs, as data: parameters, throughput, time to a target dev score,
peak memory and inference latency (unmerged, and merged where the method merges, i.e. LoRA)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.selection import POINTS, completed, not_completed
from analysis.tables import Table

TARGET_FRACTION = 0.95  # default target: 95% of the best dev score any completed trial reached
COLUMNS = ("method", "n_trials", "trainable_params", "added_params", "train_samples_per_s",
           "time_to_target_s", "time_to_best_s", "peak_mem_mib", "latency_ms", "latency_merged_ms",
           "test_mean")  # fmt: skip
COST_METRICS = ("train_samples_per_s", "peak_mem_mib", "latency_ms", "latency_merged_ms")


def default_target(trials: pd.DataFrame) -> float:
    """:data:`TARGET_FRACTION` of the best dev score of any completed trial (a fraction, not points)."""
    done = completed(trials)
    col = "best_dev_score" if "best_dev_score" in done else "dev_score"
    if done.empty or col not in done or done[col].isna().all():
        return np.nan
    return TARGET_FRACTION * float(done[col].max())


def time_to_target(history: pd.DataFrame, target: float) -> pd.Series:
    """Per trial, the ``wall_s`` of the first evaluation whose dev score reached ``target``
    (NaN when it never did)."""
    needed = {"trial_id", "dev_score", "wall_s"}
    if history.empty or not needed <= set(history.columns) or np.isnan(target):
        return pd.Series(dtype=float, name="time_to_target_s")
    hit = history[history["dev_score"] >= target].sort_values(["trial_id", "evaluation"])
    first = hit.groupby("trial_id")["wall_s"].first()
    ids = history["trial_id"].unique()
    return first.reindex(ids).rename("time_to_target_s")


def efficiency_table(
    trials: pd.DataFrame, history: pd.DataFrame, *, target: float | None = None
) -> Table:
    """E5: one row per method, averaged over its completed trials; ``time_to_target_s`` is NaN for
    a method whose trials never reached ``target`` (default :func:`default_target`)."""
    target = default_target(trials) if target is None else target
    done = completed(trials)
    missing = tuple(m for m in COST_METRICS if m not in done)
    if done.empty or "method" not in done:
        return Table("e5_efficiency", pd.DataFrame(columns=list(COLUMNS)),
                     len(not_completed(trials)), missing)  # fmt: skip
    reach = time_to_target(history, target)
    done = done.assign(time_to_target_s=done["trial_id"].map(reach))
    if "train_samples_per_s" in history and not history.empty:  # mean over the whole run
        speed = history.groupby("trial_id")["train_samples_per_s"].mean()
        done = done.assign(train_samples_per_s=done["trial_id"].map(speed))
    rows = []
    for method, g in done.groupby("method", sort=True):
        row = {"method": method, "n_trials": len(g)}
        for col in COLUMNS[2:-1]:
            row[col] = g[col].mean() if col in g else np.nan
        row["test_mean"] = g["test_score"].mean() * POINTS if "test_score" in g else np.nan
        rows.append(row)
    note = f"target dev score {target * POINTS:.1f} points" if not np.isnan(target) else ""
    return Table("e5_efficiency", pd.DataFrame(rows, columns=list(COLUMNS)),
                 len(not_completed(trials)), missing, note)  # fmt: skip
