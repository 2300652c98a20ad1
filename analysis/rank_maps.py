"""AdaLoRA's final rank allocation per layer and module, and lora_grow's final rank, as data.

Ranks come from the trial's metrics when the recipe reported ``model.method_metrics()``
(``rank_L3_query``, ``active_rank``), else from its saved weights (:mod:`analysis.artifacts`):
AdaLoRA's non-zero singular values (:func:`trainables.ranks.singular_value_ranks`), lora_grow's
frozen growth state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.artifacts import TrialArtifacts
from analysis.selection import completed, select_configs, with_seed
from search_spaces.method_config import PLACEMENTS
from trainables.ranks import parse_rank_metric, singular_value_ranks

GROWTH_STATE = "encoder.growth.state"  # lora_grow: [active rank, best dev loss, stalls]
MODULE_ORDER = PLACEMENTS["all"]


@dataclass(frozen=True, eq=False)
class RankMap:
    """Mean final rank (over seeds) of each module (rows) in each layer (columns) of one group."""

    task: str
    budget_params: int | None
    values: pd.DataFrame
    n_trials: int
    init_rank: int | None


def trial_ranks(row: pd.Series, artifacts: TrialArtifacts | None) -> dict[tuple[int, str], int]:
    """One AdaLoRA trial's final rank per (layer, module): metrics first, else its weights."""
    from_metrics = {}
    for name, value in row.items():
        where = parse_rank_metric(str(name))
        if where is not None and not pd.isna(value):
            from_metrics[where] = int(value)
    if from_metrics:
        return from_metrics
    if artifacts is None or artifacts.weights is None:
        return {}
    return singular_value_ranks(artifacts.weights.items())


def rank_maps(trials: pd.DataFrame, artifacts: Mapping[str, TrialArtifacts]) -> list[RankMap]:
    """One map per (task, budget) over the completed AdaLoRA trials that have ranks, of the
    configuration (learning rate) chosen on dev."""
    done = completed(trials)
    if done.empty or "method" not in done:
        return []
    keys = [k for k in ("task", "budget_params") if k in done]
    done = select_configs(done, [*keys, "method"])
    done = done[done["method"] == "adalora"]
    maps = []
    for group, g in done.groupby(keys, dropna=False, sort=True) if keys else []:
        group = group if isinstance(group, tuple) else (group,)
        labels = dict(zip(keys, group, strict=True))
        per_trial = [trial_ranks(r, artifacts.get(r["trial_id"])) for _, r in g.iterrows()]
        per_trial = [r for r in per_trial if r]
        if not per_trial:
            continue
        cells = pd.DataFrame(
            [{"module": m, "layer": layer, "rank": rank} for r in per_trial
             for (layer, m), rank in r.items()]
        )  # fmt: skip
        values = cells.pivot_table(index="module", columns="layer", values="rank", aggfunc="mean")
        order = [m for m in MODULE_ORDER if m in values.index]
        budget = labels.get("budget_params")
        init = g["init_rank"].dropna() if "init_rank" in g else pd.Series(dtype=float)
        maps.append(RankMap(
            task=str(labels.get("task", "")),
            budget_params=None if budget is None or pd.isna(budget) else int(budget),
            values=values.loc[order], n_trials=len(per_trial),
            init_rank=int(init.iloc[0]) if len(init) else None,
        ))  # fmt: skip
    return maps


def final_growth_rank(row: pd.Series, artifacts: TrialArtifacts | None) -> float:
    """lora_grow's active rank at the end: its metric, else its saved growth state."""
    value = row.get("active_rank")
    if value is not None and not pd.isna(value):
        return float(value)
    if artifacts is None or artifacts.weights is None or GROWTH_STATE not in artifacts.weights:
        return np.nan
    return float(artifacts.weights[GROWTH_STATE][0])


def growth_table(trials: pd.DataFrame, artifacts: Mapping[str, TrialArtifacts]) -> pd.DataFrame:
    """Per completed lora_grow trial: its budget, the rank it started at, its largest rank
    (``rank``) and its final active rank."""
    cols = ["trial_id", "task", "budget_params", "seed", "start_rank", "rank", "final_rank"]
    done = completed(trials)
    if done.empty or "method" not in done:
        return pd.DataFrame(columns=cols)
    grow = with_seed(done[done["method"] == "lora_grow"])  # seed 0 where none was logged
    rows = [{**{c: r.get(c) for c in cols[:-1]},
             "final_rank": final_growth_rank(r, artifacts.get(r["trial_id"]))}
            for _, r in grow.iterrows()]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


__all__ = ["RankMap", "final_growth_rank", "growth_table", "rank_maps", "trial_ranks"]
