"""AutoPEFT against UniPELT and the best single method: the front of score vs trainable params
and, for each baseline, whether some searched configuration dominates it."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from analysis.artifacts import TrialArtifacts, with_config_keys
from analysis.pareto import ParetoInfo, dominated_mask, pareto_front
from analysis.selection import POINTS, SELECT_BY, completed
from analysis.tables import Table

EXTRA_KEYS = ("layer_modules", "parallel_bottleneck")
COLUMNS = ["role", "method", "layer_modules", "trainable_params", "dev_score", "score",
           "dominated_by_autopeft"]  # fmt: skip


def autopeft_frame(trials: pd.DataFrame, artifacts: Mapping[str, TrialArtifacts]) -> pd.DataFrame:
    """``trials`` with the per-layer modules of each autopeft trial and its ``family``."""
    frame = with_config_keys(trials, artifacts, EXTRA_KEYS)
    family = frame["method"].map(lambda m: m if m in ("autopeft", "unipelt") else "single")
    return frame.assign(family=family)


def autopeft_front(frame: pd.DataFrame, *, score: str) -> ParetoInfo:
    """Every completed trial (searched and baseline) on one front of dev score vs trainable
    params (``score`` is reported beside each point, not chosen on)."""
    return pareto_front(frame, x="trainable_params", y=SELECT_BY)


def baseline_table(frame: pd.DataFrame, *, score: str) -> Table:
    """The best single method and the best UniPELT (both chosen on dev), then the autopeft trials
    on the front (both chosen on dev); a baseline is ``dominated_by_autopeft`` when some completed
    autopeft trial is at least as good in the reported ``score`` and size and better in one."""
    done = completed(frame)
    if done.empty or score not in done or SELECT_BY not in done:
        return Table("autopeft", pd.DataFrame(columns=COLUMNS), len(frame) - len(done))
    searched = done[done["family"] == "autopeft"]
    rows = []
    for role, family in (("best single method", "single"), ("UniPELT", "unipelt")):
        pool = done[done["family"] == family].sort_values(SELECT_BY, ascending=False)
        if not pool.empty:
            rows.append(_row(role, pool.iloc[0], score, searched))
    front = pareto_front(searched, x="trainable_params", y=SELECT_BY).front if len(searched) else []
    for _, r in front.iterrows() if len(front) else []:
        rows.append(_row("autopeft front", searched[searched["trial_id"] == r["trial_id"]].iloc[0],
                         score, None))  # fmt: skip
    return Table("autopeft", pd.DataFrame(rows, columns=COLUMNS), len(frame) - len(done))


def _row(role: str, r: pd.Series, score: str, searched: pd.DataFrame | None) -> dict:
    dominated = None
    if searched is not None and not searched.empty:
        points = pd.concat([searched[[score, "trainable_params"]],
                            pd.DataFrame([{score: r[score], "trainable_params": r["trainable_params"]}])])  # fmt: skip
        beaten = bool(dominated_mask(points.to_numpy(dtype=float), ("max", "min"))[-1])
        dominated = "yes" if beaten else "no"
    return {"role": role, "method": r["method"], "layer_modules": r.get("layer_modules"),
            "trainable_params": r["trainable_params"], "dev_score": r[SELECT_BY] * POINTS,
            "score": r[score] * POINTS, "dominated_by_autopeft": dominated}  # fmt: skip


__all__ = ["autopeft_frame", "autopeft_front", "baseline_table"]
