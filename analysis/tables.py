"""The study's tables as data (E1 methods x tasks, E2 few-shot curves, E3 transfer deltas).

Scores are in points (x 100). Only completed trials enter a score; each table counts the trials
it left out because they did not complete. E4 lives in :mod:`analysis.budget`, E5 in
:mod:`analysis.efficiency`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.selection import (
    POINTS,
    SELECT_BY,
    below_probe,
    completed,
    did_not_learn,
    not_completed,
    paired,
    select_configs,
    with_seed,
)

TREATMENT = "lora_fusion"
TRANSFER_BASELINES = ("lora", "fusion")
SHIFT_COLUMN = re.compile(r"shift_(.+)_score")


@dataclass(frozen=True, eq=False)
class Table:
    """One table: its rows, how many trials it left out (not completed), and what it lacked."""

    name: str
    data: pd.DataFrame
    left_out: int = 0  # trials that did not complete (stopped, failed, oom, running)
    missing: tuple[str, ...] = ()  # columns the table wanted but the study did not report
    note: str = ""


def _spread(values: pd.Series) -> dict[str, float]:
    """Mean, sample std (NaN for one seed), min, max and count of scores, in points."""
    v = values.dropna() * POINTS
    return {"mean": v.mean(), "std": v.std(ddof=1) if len(v) > 1 else np.nan,
            "min": v.min(), "max": v.max(), "n_seeds": int(v.size)}  # fmt: skip


def _absent(trials: pd.DataFrame, columns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c for c in columns if c not in trials.columns)


def method_task_table(trials: pd.DataFrame, *, score: str = "test_score") -> Table:
    """E1: per (task, method) the dev-selected configuration's score over seeds, its parameter
    counts, and ``best`` marking the highest mean per task (ties all marked)."""
    cols = ["task", "method", "mean", "std", "n_seeds", "trainable_params", "added_params", "lr",
            "best"]  # fmt: skip
    missing = _absent(trials, ("task", "method", score))
    chosen = select_configs(trials, ["task", "method"])
    if missing or chosen.empty:
        return Table("e1_methods", pd.DataFrame(columns=cols), len(not_completed(trials)), missing)
    rows = []
    for (task, method), g in chosen.groupby(["task", "method"], sort=True):
        counts = {
            c: g[c].median() if c in g else np.nan for c in ("trainable_params", "added_params")
        }
        rows.append({"task": task, "method": method, **_spread(g[score]), **counts,
                     "lr": g["lr"].iloc[0] if "lr" in g else np.nan})  # fmt: skip
    data = pd.DataFrame(rows)
    data["best"] = data["mean"].eq(data.groupby("task")["mean"].transform("max"))
    return Table("e1_methods", data[cols], len(not_completed(trials)))


def few_shot_table(trials: pd.DataFrame, *, score: str = "test_score") -> Table:
    """E2: per (method, train_samples) the score's mean, std, min and max over seeds, the rate
    dev chose (``lr``) and the head-only probe trained on that many rows (``probe``, points)."""
    cols = ["method", "train_samples", "lr", "mean", "std", "min", "max", "n_seeds", "probe"]
    probe = score.replace("_score", "_probe_score")
    missing = _absent(trials, ("method", "train_samples", score))
    chosen = select_configs(trials, ["method", "train_samples"])
    if missing or chosen.empty:
        return Table("e2_few_shot", pd.DataFrame(columns=cols), len(not_completed(trials)), missing)
    rows = [
        {
            "method": m,
            "train_samples": int(k),
            "lr": g["lr"].iloc[0] if "lr" in g else np.nan,
            **_spread(g[score]),
            "probe": g[probe].median() * POINTS if probe in g else np.nan,
        }  # fmt: skip
        for (m, k), g in chosen.groupby(["method", "train_samples"], sort=True)
    ]
    return Table("e2_few_shot", pd.DataFrame(rows)[cols], len(not_completed(trials)))


def evaluation_sets(trials: pd.DataFrame) -> list[tuple[str, str]]:
    """``(label, score column)`` of every set a study scored: the target task's test split, then
    each domain-shift set (``shift_<name>_score``)."""
    sets = [("test", "test_score")] if "test_score" in trials else []
    for col in sorted(trials.columns):
        match = SHIFT_COLUMN.fullmatch(col)
        if match:
            sets.append((f"shift:{match.group(1)}", col))
    return sets


def transfer_table(trials: pd.DataFrame) -> Table:
    """E3: lora_fusion - lora and lora_fusion - fusion per task and evaluation set, seed-paired.

    ``delta`` is the mean paired difference in points; ``n_pairs`` the seeds both arms completed.
    """
    cols = ["task", "evaluation_set", "baseline", "lora_fusion", "baseline_score", "delta",
            "delta_std", "n_pairs"]  # fmt: skip
    missing = _absent(trials, ("task", "method", "test_score"))
    rows = []
    for label, col in evaluation_sets(trials) if not missing else []:
        for baseline in TRANSFER_BASELINES:
            pairs = paired(trials, col, treatment=TREATMENT, control=baseline, by=["task"])
            for task, g in pairs.groupby("task", sort=True):
                rows.append({
                    "task": task, "evaluation_set": label, "baseline": baseline,
                    "lora_fusion": g["treatment"].mean(), "baseline_score": g["control"].mean(),
                    "delta": g["diff"].mean(),
                    "delta_std": g["diff"].std(ddof=1) if len(g) > 1 else np.nan,
                    "n_pairs": len(g),
                })  # fmt: skip
    return Table("e3_transfer", pd.DataFrame(rows, columns=cols), len(not_completed(trials)),
                 missing)  # fmt: skip


SUMMARY_COLUMNS = ["method", "trials", "completed", "stopped", "other", "best dev", "median dev",
                   "test of best on dev", "did not learn", "below probe"]  # fmt: skip


def method_summary(trials: pd.DataFrame) -> Table:
    """Per method: how its trials ended, its best and median dev score over completed trials
    (points), the test score of its best trial on dev, and how many completed trials scored at
    or below the majority class and below the head-only probe. The first table a reader of a
    search wants."""
    if trials.empty or "method" not in trials or "status" not in trials:
        return Table("methods", pd.DataFrame(columns=SUMMARY_COLUMNS), 0)
    done = completed(trials)
    flat, under = did_not_learn(trials), below_probe(trials)
    rows = []
    for method, g in trials.groupby("method", sort=True):
        d = done[done["method"] == method]
        dev = d[SELECT_BY].dropna() if SELECT_BY in d else pd.Series(dtype=float)
        best = d.loc[dev.idxmax()] if len(dev) else None
        test = best.get("test_score") if best is not None else None
        rows.append({"method": method, "trials": len(g), "completed": len(d),
                     "stopped": int(g["status"].eq("stopped").sum()),
                     "other": int((~g["status"].isin(["completed", "stopped"])).sum()),
                     "best dev": dev.max() * POINTS if len(dev) else np.nan,
                     "median dev": dev.median() * POINTS if len(dev) else np.nan,
                     "test of best on dev": test * POINTS if test is not None else np.nan,
                     "did not learn": int(flat.reindex(d.index, fill_value=False).sum()),
                     "below probe": int(under.reindex(d.index, fill_value=False).sum())})  # fmt: skip
    return Table("methods", pd.DataFrame(rows, columns=SUMMARY_COLUMNS), 0)


def trials_overview(trials: pd.DataFrame) -> Table:
    """Every trial with its status and key figures (completed or not), best dev score first."""
    want = ["trial_id", "status", "fidelity", "method", "task", "train_samples", "seed", "rank",
            "bottleneck", "fusion", "fusion_layers", "sources", "lr", "trainable_params",
            "dev_score", "test_score", "dev_top_class_share", "learned"]  # fmt: skip
    flat = did_not_learn(trials).reindex(trials.index, fill_value=False)
    under = below_probe(trials).reindex(trials.index, fill_value=False)
    done = trials.index.isin(completed(trials).index)
    learned = pd.Series(np.where(flat, "NO: at majority class",
                                 np.where(under, "below head-only probe", "yes")),
                        index=trials.index).where(done)  # fmt: skip
    data = with_seed(trials).assign(learned=learned)
    data = data[[c for c in want if c in data.columns]]
    if "dev_score" in data:
        data = data.sort_values("dev_score", ascending=False, na_position="last")
    return Table("trials", data.reset_index(drop=True), len(trials) - len(completed(trials)))
