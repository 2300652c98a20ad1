"""``python -m tuner.bench``: the performance figures of docs/BENCHMARKS.md, as JSON and markdown.

    python -m tuner.bench --suite trial --device cuda                    # ours vs HF Trainer
    python -m tuner.bench --suite trial --settings ours-bs32,trainer-bs32 --train-samples 2000
    python -m tuner.bench --suite packing --levels 1,2,4,8,16 --train-samples 8000 [--via tune] [--mps]
    python -m tuner.bench --suite packing --levels 1,2,4,8,16 --via fused   # trials fused in one model
    python -m tuner.bench --suite search --study asha=RESULTS/e4-asha --study fifo=RESULTS/e4-fifo
    python -m tuner.bench --suite hpsearch --study ours=RESULTS/e4_budget-demo \
        --experiment e4_budget --preset demo --max-trials 12 --gpus 1   # the usual way, same trials

Each suite writes ``<out>/bench-<suite>.json`` (rows, summary, command, date, device, versions)
after every measurement, so an interrupted run keeps what it measured, and
``<out>/bench-<suite>.md``; the markdown table is printed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from search_spaces.errors import ConfigError
from tuner.bench.packing import FUSED_SEEDS
from tuner.cli import add_set_argument

SUITES = ("trial", "packing", "search", "hpsearch")
DEFAULT_TRIAL_SETTINGS = "trainer-bs32,ours-bs32,ours-bs128,ours-bs128-bf16w,trainer-bs128"
MPS_MODES = {"no": (False,), "yes": (True,), "both": (False, True)}  # packing: levels measured
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
]  # fmt: skip
HPSEARCH_COLUMNS: list[Column] = [
    ("trial_index", "trial", "d"), ("config", "config", ""), ("status", "Trainer", ""),
    ("dev_score", "dev (Trainer)", ".4f"), ("wall_s", "wall s", ",.1f"),
    ("study_trial", "study trial", ""), ("study_status", "study", ""),
    ("study_dev_score", "dev (study)", ".4f"), ("dev_diff", "Trainer - study", "+.4f"),
]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.bench", description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=SUITES, default="trial")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    p.add_argument("--task", default="glue/sst2")
    p.add_argument("--backbone", default="minilm-l6", help="a registered backbone or a folder")
    p.add_argument("--data-dir", help="local data mirror (default $PEFT_TUNE_DATA_DIR)")
    p.add_argument("--train-samples", type=int, help="stratified subset (default: all)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--settings", default=DEFAULT_TRIAL_SETTINGS,
                   help="trial suite: comma-separated names of tuner.bench.trial.SETTINGS")  # fmt: skip
    p.add_argument("--seeds", default="0", help="trial suite: comma-separated seeds per setting")
    p.add_argument("--levels", default="1,2,4,8,16", help="packing: concurrent trials per GPU")
    p.add_argument("--batch-size", type=int, default=32, help="packing: per trial")
    p.add_argument(
        "--mps",
        nargs="?",
        const="both",
        default="no",
        choices=tuple(MPS_MODES),
        help="packing: under NVIDIA MPS too (bare --mps: both), only (yes), or not (no)",
    )
    p.add_argument("--via", default="processes", metavar="{processes,fused,tune,pool}",
                   help="packing: trials as processes the bench starts, fused into one model in "
                        "one process (LoRA), through Ray Tune with gpus_per_trial = 1/N as a "
                        "study runs them, or through Ray Tune into one fused pool that holds "
                        "the GPU (trainables/fused_pool.py)")  # fmt: skip
    p.add_argument(
        "--fused-seeds",
        choices=FUSED_SEEDS,
        default="same",
        help="packing --via fused: the trials share the seed (one data order, as in a "
        "search) or trial k has seed k (each pads to the longest batch of a step)",
    )
    p.add_argument("--fused-per-process", type=int, default=0, metavar="F",
                   help="packing --via fused: F trials per process, n / F processes (default: "
                        "all n in one)")  # fmt: skip
    p.add_argument("--study", action="append", default=[], metavar="NAME=FOLDER",
                   help="search: a Tune experiment folder (repeat: asha=..., fifo=...)")  # fmt: skip
    p.add_argument("--gpus", type=float, help="search: GPUs the studies ran on; hpsearch: GPUs "
                   "the study ran on and the baseline uses, one trial each (default 1)")  # fmt: skip
    p.add_argument("--experiment", help="hpsearch: the study's (python -m tuner.run --list)")
    p.add_argument("--preset", default="full", help="hpsearch: the study's preset (default full)")
    add_set_argument(p, "hpsearch: the study's --set overrides (repeatable)")
    p.add_argument("--max-trials", type=int, help="hpsearch: the study's first K trials only")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="hpsearch: CPUs per trial")
    p.add_argument("--out", default="bench-results", help="folder for the JSON and markdown")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    run = {"trial": trial_suite, "packing": packing_suite, "search": search_suite,
           "hpsearch": hpsearch_suite}[args.suite]  # fmt: skip
    record = Record(Path(args.out), args.suite, _command(argv))
    run(args, record)
    print(record.markdown())
    return 0


class Record:
    """The suite's document, rewritten to disk after each row."""

    def __init__(self, out: Path, suite: str, command: str) -> None:
        from tuner.provenance import provenance

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


# --- the suites ------------------------------------------------------------------------------------


def trial_suite(args: argparse.Namespace, record: Record) -> None:
    from tuner.bench.trial import SETTINGS, TrialRow, Workload, finish_rows, run_setting

    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise ConfigError(f"--settings {unknown[0]!r} is unknown; known: {', '.join(SETTINGS)}")
    seeds = _int_list("--seeds", args.seeds, minimum=0)
    device = _device(args.device)
    data = _prepare(args)
    rows: list[TrialRow] = []
    for seed in seeds:  # seed-major: an interrupted run still has every setting's first seed
        work = Workload(data=data, backbone=args.backbone, epochs=args.epochs, device=device,
                        seed=seed)  # fmt: skip
        for name in names:
            _log(f"trial suite: {name} seed {seed}")
            rows.append(replace(run_setting(SETTINGS.get(name), work), seed=seed))
            summary = finish_rows(rows)
            record.set_rows([r.to_dict() for r in rows], **summary, **_data_summary(data))
            _log(f"  {rows[-1].train_samples_per_s:,.0f} samples/s, dev {rows[-1].dev_score:.4f}"
                 f", test {rows[-1].test_score:.4f}")  # fmt: skip


def packing_suite(args: argparse.Namespace, record: Record) -> None:
    from trainables.backbones import load_backbone
    from trainables.data.tokenize import cache_stats
    from trainables.flops import device_peak_flops
    from tuner.bench.packing import (
        PackingSetup,
        best_gpus_per_trial,
        mps_daemon,
        run_level,
        save_data,
        with_speedups,
    )  # fmt: skip
    from tuner.bench.packing_tune import check_via, measure_tune

    via = check_via(args.via)
    levels = _levels(args.levels)
    per = args.fused_per_process
    if via != "fused" and (per or args.fused_seeds != "same"):
        raise ConfigError(f"--fused-per-process and --fused-seeds apply to --via fused, "
                          f"not --via {via}")  # fmt: skip
    if per < 0 or any(n > per and n % per for n in levels if per):
        raise ConfigError(f"--fused-per-process={per} must be >= 0 and divide every level "
                          f"above it: --levels {args.levels}")  # fmt: skip
    device = _device(args.device)
    before = cache_stats()
    data = _prepare(args)  # tokenised once (per split) for every trial of every level
    after = cache_stats()
    work = {"tokenisations": after.misses - before.misses,
            "tokenisation_cache_hits": after.hits - before.hits}  # fmt: skip
    shape = load_backbone(args.backbone, meta=True).shape
    rows: list[Any] = []

    def publish(row: Any) -> None:
        rows.append(row)
        done = with_speedups(rows)
        # keyed by level (+ "-mps"), + "-tune" for the baseline of --via pool
        walls = {f"{r.concurrent}{'-mps' if r.mps else ''}{'' if r.via == via else '-' + r.via}":
                 (r.wall_s, r.wall_samples_per_s)
                 for r in done if r.wall_s and r.wall_samples_per_s is not None}  # fmt: skip
        tune_wall = {"tune_wall_s": {k: round(s, 1) for k, (s, _) in walls.items()},
                     "tune_wall_samples_per_s": {k: round(v) for k, (_, v) in walls.items()}
                     } if walls else {}  # fmt: skip
        record.set_rows([r.to_dict() for r in done], **work, via=via,
                        best_gpus_per_trial=best_gpus_per_trial(
                            [r for r in done if not r.mps and r.via not in ("fused", "pool")]),
                        **tune_wall, **_data_summary(data))  # fmt: skip
        wall = f", whole Tune run {row.wall_s:,.1f} s" if row.wall_s is not None else ""
        _log(f"  aggregate {done[-1].aggregate_samples_per_s:,.0f} samples/s{wall}")

    with tempfile.TemporaryDirectory(prefix="peft-tune-packing-") as tmp:
        setup = PackingSetup(backbone=args.backbone, device=device, batch_size=args.batch_size,
                             shape=shape, peak_flops=device_peak_flops(device),
                             workdir=Path(tmp))  # fmt: skip
        if via in ("tune", "pool"):
            measure_tune(levels, setup, data=data, mps=MPS_MODES[args.mps], publish=publish,
                         log=_log, pooled=via == "pool")  # fmt: skip
            return
        data_file = save_data(data, Path(tmp) / "data.pkl")

        def measure(mps: bool) -> None:
            under = " under MPS" if mps else ""
            if via == "fused":  # one trial alone as the baseline, then each level fused
                _log(f"packing: 1 trial alone (the baseline){under}")
                publish(run_level(1, setup, data_file=data_file, mps=mps))
            for n in levels:
                fuse = min(n, args.fused_per_process or n) if via == "fused" else 0
                how = f", fused {fuse} per process" if fuse else ""
                _log(f"packing: {n} trial(s){how}{under}")
                publish(run_level(n, setup, data_file=data_file, mps=mps, fuse=fuse,
                                  fused_seeds=args.fused_seeds))  # fmt: skip

        if False in MPS_MODES[args.mps]:
            measure(mps=False)
        if True in MPS_MODES[args.mps]:
            with mps_daemon(Path(tmp) / "mps") as started:
                if started:
                    measure(mps=True)
                else:
                    _log("packing: no nvidia-cuda-mps-control here, MPS skipped")


def search_suite(args: argparse.Namespace, record: Record) -> None:
    from tuner.bench.search import compare_studies

    studies = {}
    for item in args.study:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            raise ConfigError(f"--study {item!r} must be NAME=FOLDER with an existing folder")
        studies[name] = folder
    if not studies:
        raise ConfigError("--suite search needs --study NAME=FOLDER (e.g. asha=..., fifo=...)")
    rows = compare_studies(studies, gpus=args.gpus)
    record.set_rows([r.to_dict() for r in rows])


def hpsearch_suite(args: argparse.Namespace, record: Record) -> None:
    """A finished study's configs run the usual way (``Trainer.hyperparameter_search`` on Ray
    Tune, one trial per GPU): per-trial dev scores beside the study's, trials per GPU-hour."""
    from tuner.bench.hpsearch import BaselineSetup, baseline_of_study
    from tuner.experiments import get_experiment
    from tuner.overrides import apply_sets, parse_sets

    name, sep, folder = (args.study[0] if len(args.study) == 1 else "").partition("=")
    if not sep or not args.experiment:
        raise ConfigError("--suite hpsearch needs one --study NAME=FOLDER (a finished study) and "
                          "--experiment NAME with the study's --preset and --set")  # fmt: skip
    exp = apply_sets(get_experiment(args.experiment).with_preset(args.preset), parse_sets(args.set))
    setup = BaselineSetup(
        device=_device(args.device), gpus=1.0 if args.gpus is None else args.gpus,
        cpus_per_trial=args.cpus_per_trial, storage=Path(args.out).resolve() / "hpsearch-tune",
        max_trials=args.max_trials, data_dir=args.data_dir,
    )  # fmt: skip
    rows, summary = baseline_of_study(folder, exp, setup, study_name=name, log=_log)
    record.set_rows([r.to_dict() for r in rows], **summary)


# --- helpers ---------------------------------------------------------------------------------------


def _prepare(args: argparse.Namespace) -> Any:
    from trainables.backbones import load_backbone
    from tuner.prepare import prepare

    tokenizer = load_backbone(args.backbone, meta=True).tokenizer
    return prepare(args.task, tokenizer=tokenizer, max_length=args.max_length,
                   train_samples=args.train_samples, data_dir=args.data_dir)  # fmt: skip


def _data_summary(data: Any) -> dict[str, Any]:
    return {"task": data.task, "train": len(data.train), "dev": len(data.dev),
            "test": len(data.test),
            "mean_tokens": round(float(data.train.lengths.mean()), 2)}  # fmt: skip


def _device(choice: str | None) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no CUDA device")
    return choice or ("cuda" if torch.cuda.is_available() else "cpu")


def _levels(text: str) -> list[int]:
    return _int_list("--levels", text, minimum=1)


def _int_list(option: str, text: str, *, minimum: int) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise ConfigError(f"{option} {text!r} must be integers >= {minimum}, e.g. 1,2,4,8")
    return values


def _command(argv: list[str]) -> str:
    return "python -m tuner.bench " + " ".join(shlex.quote(a) for a in argv)


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
