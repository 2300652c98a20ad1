"""The document of one bench suite: rows and summary as JSON, rewritten after each measurement
so an interrupted run keeps what it measured, and the same as a markdown table."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from tuner.provenance import provenance

Column = tuple[str, str, str]  # key, header, format spec ("" = str)
TRIAL_COLUMNS: list[Column] = [
    ("setting", "setting", ""), ("seed", "seed", "d"), ("batch_size", "batch", "d"),
    ("lr", "lr", "g"),
    ("train_samples_per_s", "train samples/s", ",.0f"), ("speedup", "speed-up", ".2f"),
    ("time_to_target_s", "s to dev target", ".1f"), ("wall_s", "wall s", ".1f"),
    ("dev_score", "dev", ".4f"), ("test_score", "test", ".4f"),
    ("peak_mem_mib", "peak MiB", ",.0f"), ("mfu", "MFU", ".2%"),
]  # fmt: skip
MEANS_COLUMNS: list[Column] = [
    ("setting", "setting", ""), ("seeds", "seeds", "d"),
    ("train_samples_per_s", "train samples/s", ",.0f"), ("speedup", "speed-up", ".2f"),
    ("dev_score", "dev", ".4f"), ("test_score", "test", ".4f"),
    ("test_gap_points", "test vs baseline (points)", "+.2f"),
]  # fmt: skip
PACKING_COLUMNS: list[Column] = [
    ("concurrent", "trials", "d"), ("gpus_per_trial", "gpus/trial", ".3g"), ("mps", "MPS", ""),
    ("aggregate_samples_per_s", "aggregate samples/s", ",.0f"), ("speedup", "vs 1", ".2f"),
    ("trial_samples_per_s", "per trial", ",.0f"), ("mfu", "GPU MFU", ".2%"),
    ("peak_mem_mib", "peak MiB/trial", ",.0f"), ("dev_score", "dev", ".4f"), ("failed", "failed", "d"),
    ("via", "via", ""),
]  # fmt: skip
SEARCH_COLUMNS: list[Column] = [
    ("study", "study", ""), ("trials", "trials", "d"), ("completed", "completed", "d"),
    ("stopped", "stopped", "d"), ("outside_budget", "outside budget", "d"),
    ("wall_s", "wall s", ",.0f"), ("best_dev_score", "best dev", ".4f"),
    ("time_to_near_best_s", "s to best-0.5pt", ",.0f"),
    ("trials_per_gpu_hour", "completed/GPU-h", ",.1f"),
    ("finished_per_gpu_hour", "completed+stopped/GPU-h", ",.1f"),
    ("slowest_trial_s", "slowest trial s", ",.1f"),
]  # fmt: skip
HPSEARCH_COLUMNS: list[Column] = [
    ("trial_index", "trial", "d"), ("config", "config", ""), ("status", "Trainer", ""),
    ("dev_score", "dev (Trainer)", ".4f"), ("wall_s", "wall s", ",.1f"),
    ("study_trial", "study trial", ""), ("study_status", "study", ""),
    ("study_dev_score", "dev (study)", ".4f"), ("dev_diff", "Trainer - study", "+.4f"),
]  # fmt: skip


class Record:
    """The suite's document, rewritten to disk after each row."""

    def __init__(self, out: Path, suite: str, command: str) -> None:
        self.path = out / f"bench-{suite}.json"
        self.columns = {"trial": TRIAL_COLUMNS, "packing": PACKING_COLUMNS,
                        "search": SEARCH_COLUMNS, "hpsearch": HPSEARCH_COLUMNS}[suite]  # fmt: skip
        self.doc: dict[str, Any] = {
            "suite": suite, "command": command,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **provenance(), "rows": [], "summary": {},
        }  # fmt: skip

    def set_rows(self, rows: list[dict[str, Any]], **summary: Any) -> None:
        self.doc["rows"] = rows
        self.doc["summary"].update(summary)
        self.path.parent.mkdir(parents=True, exist_ok=True)  # not before a first row: bad input
        self.path.write_text(json.dumps(self.doc, indent=2, default=str))
        self.path.with_suffix(".md").write_text(self.markdown())

    def markdown(self) -> str:
        d = self.doc
        head = f"`{d['command']}` on {d['device']}, {d['date'][:10]}, commit {d['git_commit'][:12]}"
        items = {k: v for k, v in d["summary"].items() if k != "means"}
        summary = "".join(f"\n- {k}: {_fmt(v, '')}" for k, v in items.items())
        means = d["summary"].get("means")
        if means:
            rows = [{"setting": name, **m} for name, m in means.items()]
            summary += "\n\nMeans over seeds:\n\n" + markdown_table(rows, MEANS_COLUMNS) + "\n"
        return f"{head}\n\n{markdown_table(d['rows'], self.columns)}\n{summary}\n"


def markdown_table(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    """A markdown table of ``rows`` (dicts) with ``columns``; missing values show as ``-``."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" if not f else "---:" for _, _, f in columns) + "|"]  # fmt: skip
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k), f) for k, _, f in columns) + " |")
    return "\n".join(lines)


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not spec:
        return f"{value:.4g}"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


__all__ = [
    "Column", "HPSEARCH_COLUMNS", "MEANS_COLUMNS", "PACKING_COLUMNS", "Record", "SEARCH_COLUMNS",
    "TRIAL_COLUMNS", "markdown_table",
]  # fmt: skip
