"""Which learning rates dev chose, and whether one sits at the edge of its method's range.

Each method searches its own range (``search_spaces.spaces.LR_RANGES``, the fair-arms rule of
docs/STUDIES.md). A rate chosen in the top or bottom fifth of the range (log scale; a three-point
grid's end points sit at 1/6 and 5/6) says the best may lie outside it: that arm may be under-tuned
against the others, so the report names it rather than letting a comparison rest on it silently.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.selection import select_configs
from search_spaces.spaces import LR_RANGES

EDGE = 0.2  # the outer fifth of the range at each end, in log space
GROUPS = ("task", "train_samples", "budget_params")  # a rate is chosen per group as well
COLUMNS = ["method", "group", "lr", "low", "high", "position", "edge"]


def range_position(method: str, lr: float) -> float:
    """Where ``lr`` sits in the method's range, 0 (its low end) to 1 (its high end), log scale."""
    lo, hi = LR_RANGES[method]
    return math.log(lr / lo) / math.log(hi / lo)


def chosen_rates(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method (and task, training size, budget where the study varies them): the rate of the
    configuration chosen on dev, its place in the range and ``edge`` ("top", "bottom" or "")."""
    by = [c for c in GROUPS if c in trials and trials[c].nunique(dropna=True) > 1]
    chosen = select_configs(trials, [*by, "method"])
    if chosen.empty or "lr" not in chosen:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    for _, r in chosen.drop_duplicates([*by, "method"]).iterrows():
        if r["method"] not in LR_RANGES or pd.isna(r["lr"]):
            continue
        lo, hi = LR_RANGES[r["method"]]
        position = range_position(r["method"], float(r["lr"]))
        edge = "top" if position >= 1 - EDGE else "bottom" if position <= EDGE else ""
        group = " ".join(f"{c}={r[c]}" for c in by)
        rows.append({"method": r["method"], "group": group, "lr": float(r["lr"]), "low": lo,
                     "high": hi, "position": position, "edge": edge})  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["method", "group"], ignore_index=True)


def edge_note(trials: pd.DataFrame) -> list[str]:
    """A visible note naming the methods whose chosen rate sits at the edge of their range."""
    rates = chosen_rates(trials)
    edges = rates[rates["edge"] != ""]
    if edges.empty:
        return []
    items = "; ".join(
        f"{r.method}{f' ({r.group})' if r.group else ''} at {r.lr:.1e}, the {r.edge} of "
        f"{r.low:.0e}..{r.high:.0e}"
        for r in edges.itertuples()
    )
    return [f"**Learning rate at the edge of its range ({len(edges)} of {len(rates)} chosen):** "
            f"{items}. The best rate may lie outside the range searched: such an arm may be "
            "under-tuned against the others (docs/STUDIES.md, fair arms)."]  # fmt: skip


__all__ = ["chosen_rates", "edge_note", "range_position"]
