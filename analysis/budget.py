"""E4: how the splits of one parameter budget fare, as data (best splits, heat map).

A split's *LoRA share* is the parameters its LoRA modules hold over the parameters the trial's
budget counts (``search_spaces.accounting.lora_share``, the definition the sampler's strata use:
at most 100 % even at the tolerance's +5 %), counted on the backbone's shape; its
*fusion* lump is how many source adapters are fused on how many layers. Without the shape the
heat map's x axis falls back on the LoRA rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.params import param_text
from analysis.selection import (
    POINTS,
    SELECT_BY,
    completed,
    config_key,
    not_completed,
    with_seed,
)
from analysis.tables import Table
from search_spaces.accounting import LORA_SHARE_BINS, ParamCount, lora_module_params, lora_share
from search_spaces.errors import ConfigError
from search_spaces.matching import Budget
from search_spaces.shapes import BackboneShape
from search_spaces.spaces import METHOD_KEYS, method_config_from_params

SHARE_BINS = (-math.inf, *(edge for edge, _ in LORA_SHARE_BINS))
SHARE_LABELS = tuple(label for _, label in LORA_SHARE_BINS)
NO_FUSION = "no fusion"
SPLIT_COLUMNS = ("trial_id", "method", "rank", "placement", "fusion", "fusion_layers", "sources",
                 "bottleneck", "target_bottleneck", "lr", "trainable_params", "budget_deviation")  # fmt: skip


@dataclass(frozen=True, eq=False)
class HeatMapInfo:
    """Per cell of LoRA share x fusion lump, the score (points) of the trial best on dev there;
    ``counts`` completed trials per cell."""

    x_label: str
    y_label: str
    score: str
    values: pd.DataFrame  # index: fusion lumps, columns: LoRA share bins (or ranks); NaN = no trial
    counts: pd.DataFrame


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else value
    return value


def lora_split(row: Mapping[str, Any], shape: BackboneShape) -> tuple[float, float]:
    """``(parameters in the trial's LoRA modules, its LoRA share)``: ``(0, 0)`` for fusion alone,
    NaN for other methods or what the row's config (or budget, for the share) cannot rebuild."""
    if row.get("method") == "fusion":
        return 0.0, 0.0
    if row.get("method") not in ("lora", "lora_fusion"):
        return np.nan, np.nan
    # back to the text MLflow stored: tuple fields (layers, sources...) parse from it
    params = {k: param_text(_clean(row[k])) for k in METHOD_KEYS if _clean(row.get(k)) is not None}
    try:
        config = method_config_from_params(
            params, num_labels=2, head=str(row.get("head") or "mean")
        )
        lora = float(lora_module_params(config, shape) or 0)
    except (ConfigError, TypeError, ValueError):
        return np.nan, np.nan
    try:  # the trial's own figures: the head of its task's labels, its accounting
        recorded = ParamCount(int(row["trainable_params"]), int(row.get("added_params") or 0))
        budget = Budget(
            int(row["budget_params"]), accounting=str(row.get("accounting") or "trainable")
        )
        return lora, float(lora_share(config, shape, budget.params(recorded)) or 0)
    except (ConfigError, KeyError, TypeError, ValueError):
        return lora, np.nan


def lora_params(row: Mapping[str, Any], shape: BackboneShape) -> float:
    """Parameters in the trial's LoRA modules (0 for fusion alone, NaN for other methods)."""
    return lora_split(row, shape)[0]


def fusion_lump(row: Mapping[str, Any], num_layers: int | None) -> str:
    """E.g. ``3 sources x 2 layers``; ``no fusion`` for LoRA alone."""
    if row.get("method") not in ("fusion", "lora_fusion"):
        return NO_FUSION
    sources = [s for s in str(row.get("sources") or "").split(",") if s]
    layers = _clean(row.get("fusion_layers"))
    if layers is None:
        depth: Any = num_layers if num_layers else "all"
    else:
        depth = len(str(layers).split(","))
    return f"{len(sources)} sources x {depth} layers"


def with_split(trials: pd.DataFrame, shape: BackboneShape | None) -> pd.DataFrame:
    """``trials`` with ``lora_params``, ``lora_share`` (see :func:`lora_split`) and ``fusion_lump``."""
    rows = trials.to_dict("records")
    split = [lora_split(r, shape) if shape else (np.nan, np.nan) for r in rows]
    lumps = [fusion_lump(r, shape.num_layers if shape else None) for r in rows]
    return trials.assign(lora_params=[lora for lora, _ in split],
                         lora_share=[share for _, share in split], fusion_lump=lumps)  # fmt: skip


def best_splits(
    trials: pd.DataFrame, *, shape: BackboneShape | None = None, score: str = "test_score",
    top: int = 10,
) -> Table:  # fmt: skip
    """The ``top`` completed splits by mean dev score over their seeds (a split the seeds phase
    re-ran is one row, ``seeds`` > 1), with their mean test score (points) and LoRA share."""
    done = with_split(completed(trials), shape)
    cols = [c for c in SPLIT_COLUMNS if c in done] + ["lora_share", "fusion_lump", "seeds", "dev",
                                                      "score"]  # fmt: skip
    if done.empty or SELECT_BY not in done:
        return Table("e4_splits", pd.DataFrame(columns=cols), len(not_completed(trials)))
    done = with_seed(done).assign(
        dev=done[SELECT_BY] * POINTS, score=done[score] * POINTS if score in done else np.nan,
        _config=config_key(done),
    )  # fmt: skip
    means = done.groupby("_config", sort=False).agg(
        dev=("dev", "mean"), score=("score", "mean"), seeds=("seed", "nunique")
    )
    first = done.drop(columns=["dev", "score"]).drop_duplicates("_config").set_index("_config")
    data = first.join(means).sort_values(["dev", "trial_id"], ascending=[False, True])
    data = data.head(top)[cols]
    note = "" if shape else "backbone shape unknown: LoRA share not computed"
    return Table("e4_splits", data.reset_index(drop=True), len(not_completed(trials)), note=note)


def budget_heatmap(
    trials: pd.DataFrame, *, shape: BackboneShape | None = None, score: str = "test_score"
) -> HeatMapInfo:
    """Per (fusion lump, LoRA share bin): ``score`` of the completed trial with the best dev score
    in that cell (chosen on dev, reported on ``score``)."""
    done = with_split(completed(trials), shape)
    if shape is not None:
        x = pd.cut(done["lora_share"], bins=list(SHARE_BINS), labels=list(SHARE_LABELS))
        x_label, columns = "LoRA share of the budget", list(SHARE_LABELS)
    else:
        rank = done["rank"] if "rank" in done else pd.Series(np.nan, index=done.index)
        x = rank.where(done["method"].isin(["lora", "lora_fusion"]), 0).fillna(0).astype(int)
        x_label, columns = "LoRA rank", sorted(x.unique().tolist())
    y_label = "fusion sources x depth"
    values = done[score] * POINTS if score in done else pd.Series(np.nan, index=done.index)
    dev = done[SELECT_BY] if SELECT_BY in done else pd.Series(np.nan, index=done.index)
    cells = pd.DataFrame({"y": done["fusion_lump"], "x": x, "v": values, "dev": dev})
    cells = cells.dropna(subset=["x"])
    if cells.empty:
        empty = pd.DataFrame(index=pd.Index([], name="y"), columns=columns)
        return HeatMapInfo(x_label, y_label, score, empty, empty.fillna(0))
    rows = sorted(cells["y"].unique().tolist(), key=lambda s: (s != NO_FUSION, s))
    chosen = cells.sort_values("dev", ascending=False, kind="stable").drop_duplicates(["y", "x"])
    best = chosen.pivot_table(index="y", columns="x", values="v", aggfunc="first", observed=False)
    count = cells.pivot_table(index="y", columns="x", values="v", aggfunc="count", observed=False)
    best = best.reindex(index=rows, columns=columns)
    count = count.reindex(index=rows, columns=columns).fillna(0).astype(int)
    return HeatMapInfo(x_label, y_label, score, best, count)
