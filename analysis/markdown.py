"""Markdown over the analysis data: tables, the completeness notice, verdicts. Formatting only."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.completeness import Completeness
from analysis.hypotheses import Verdict
from analysis.pareto import ParetoInfo
from analysis.tables import Table

MAX_LISTED = 12  # longer lists of missing things are cut with a count
# Columns in points (x 100) across the analysis tables: always two decimals.
POINT_COLUMNS = ("mean", "std", "min", "max", "lora_fusion", "baseline_score", "delta_std", "dev",
                 "score", "test_mean", "dev (points)", "test (points)")  # fmt: skip
# one notation per quantity: learning rates in scientific notation, shares as fractions
FORMATS = {**dict.fromkeys(POINT_COLUMNS, ".2f"), "delta": "+.2f", "lr": ".1e",
           "dev_top_class_share": ".2f"}  # fmt: skip
SCORES_IN_POINTS = {"dev_score": "dev (points)", "test_score": "test (points)"}


def in_points(data: pd.DataFrame) -> pd.DataFrame:
    """``dev_score``/``test_score`` (fractions in the data) as points, named so: every table of
    a report reads in one unit."""
    present = {k: v for k, v in SCORES_IN_POINTS.items() if k in data}
    return data.assign(**{k: data[k] * 100.0 for k in present}).rename(columns=present)


def fmt(value: Any) -> str:
    """Whole numbers with thousands separators, fractions with 4 significant digits, others with 2
    decimals, missing as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:,.2f}"
    return str(value).replace("|", "\\|")


def frame(data: pd.DataFrame, *, formats: Mapping[str, str] | None = None) -> str:
    """A DataFrame as a markdown table; ``formats`` maps a column to a format spec."""
    if data.empty:
        return "_no rows_"
    formats = {**FORMATS, **(formats or {})}
    head = "| " + " | ".join(str(c) for c in data.columns) + " |"
    rule = "|" + "|".join("---" for _ in data.columns) + "|"
    lines = [head, rule]
    for _, row in data.iterrows():
        cells = []
        for col, value in row.items():
            spec = formats.get(str(col))
            ok = spec and isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and not pd.isna(value)
            cells.append(format(value, spec) if ok else fmt(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


STATUS_LABELS = {"stopped": "stopped early by ASHA, by design"}
STATUS_NOTES = {
    "killed": " (lost with a killed driver; --resume ran another trial in its place)",
}


def completeness(c: Completeness) -> str:
    """The notice at the top of a report: what is there and what is missing."""
    counts = ", ".join(f"{n} {STATUS_LABELS.get(s, s)}" for s, n in c.status_counts) or "none"
    lines = [f"**Trials:** {c.n_trials} ({counts})."]
    if c.stopped:
        lines += ["", f"<details><summary>{len(c.stopped)} trial(s) stopped early by ASHA, by "
                  "design: their low-fidelity scores stay out of every table</summary>", "",
                  ", ".join(c.stopped), "", "</details>"]  # fmt: skip
    real_gaps = c.gaps or c.missing_tasks or c.missing_arms or c.missing_metrics
    if c.n_trials > 0 and not real_gaps:
        return "\n".join([*lines, "", "Nothing is missing: every trial completed or was stopped "
                           "early by design."])  # fmt: skip
    lines += ["", "**Partial study. Missing:**", ""]
    if c.gaps:
        by_status: dict[str, list[str]] = {}
        for trial_id, status in c.gaps:
            by_status.setdefault(status, []).append(trial_id)
        for status, ids in by_status.items():
            note = STATUS_NOTES.get(status, "")
            lines.append(f"- {len(ids)} {status} trial(s){note}: {_listed(ids)}")
    if c.missing_tasks:
        lines.append(f"- tasks of the plan without a completed trial: "
                     f"{_listed(list(c.missing_tasks))} (each task is a run of its own; "
                     f"`--all-runs` reports an MLflow store's runs together)")  # fmt: skip
    if c.missing_arms:
        lines.append(f"- planned arms without a completed trial: {_listed(list(c.missing_arms))}")
    if c.missing_metrics:
        lines.append(f"- metrics no completed trial reported: {_listed(list(c.missing_metrics))}")
    if c.n_trials == 0:
        lines.append("- every trial: the study has none")
    return "\n".join(lines)


def table_notes(table: Table) -> str:
    notes = []
    if table.left_out:
        notes.append(f"{table.left_out} trial(s) that did not complete are left out")
    if table.missing:
        notes.append(f"not reported by the study: {', '.join(table.missing)}")
    if table.note:
        notes.append(table.note)
    return f"_{'; '.join(notes)}._" if notes else ""


def e1_matrix(table: Table) -> str:
    """Method x task, ``mean ± std (n)`` in points; the best per task in bold."""
    d = table.data
    if d.empty:
        return "_no completed trials_"

    def cell(r: pd.Series) -> str:
        std = "" if pd.isna(r["std"]) else f" ± {r['std']:.2f}"
        text = f"{r['mean']:.2f}{std} (n={r['n_seeds']})"
        return f"**{text}**" if r["best"] else text

    d = d.assign(cell=d.apply(cell, axis=1))
    wide = d.pivot(index="method", columns="task", values="cell").fillna("–").reset_index()
    # a method's size may be chosen per task: show the range where the tasks' choices differ
    counts = d.groupby("method")[["trainable_params", "added_params"]].agg(_count_range)
    return frame(wide.merge(counts.reset_index(), on="method", how="left"))


def _count_range(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    low, high = int(values.min()), int(values.max())
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def _signed(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.2f}"


def verdicts(items: Sequence[Verdict]) -> str:
    rows = [{"hypothesis": v.hypothesis, "verdict": v.verdict, "effect (points)": v.effect_size,
             "95% CI": f"[{_signed(v.ci_low)}, {_signed(v.ci_high)}]", "pairs": v.n_pairs,
             "claim": v.claim, "evidence": v.evidence} for v in items]  # fmt: skip
    return frame(pd.DataFrame(rows), formats={"effect (points)": "+.2f"})


def pareto(info: ParetoInfo) -> str:
    lines = [f"Front of {info.y} ({info.y_mode}) vs {info.x} ({info.x_mode}): "
             f"{len(info.front)} on the front, {len(info.dominated)} dominated, "
             f"{len(info.excluded)} excluded (not completed or unscored).", "",
             frame(in_points(info.front))]  # fmt: skip
    if not info.excluded.empty:
        lines += ["", "Excluded from the front:", "", frame(in_points(info.excluded))]
    return "\n".join(lines)
