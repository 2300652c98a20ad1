"""``python -m tuner.bench``: the performance figures of docs/BENCHMARKS.md, as JSON and markdown.

    python -m tuner.bench --suite trial --device cuda                    # ours vs HF Trainer
    python -m tuner.bench --suite trial --settings ours-bs32,trainer-bs32 --train-samples 2000
    python -m tuner.bench --suite packing --levels 1,2,4,8,16 --train-samples 8000 [--via tune] [--mps]
    python -m tuner.bench --suite packing --levels 1,2,4,8,16 --via fused   # trials fused in one model
    python -m tuner.bench --suite packing --levels 64 --via fused --profile-steps 20  # where time goes
    python -m tuner.bench --suite search --study asha=RESULTS/e4-asha --study fifo=RESULTS/e4-fifo
    python -m tuner.bench --suite hpsearch --study ours=RESULTS/e4_budget-demo \
        --experiment e4_budget --preset demo --max-trials 12 --gpus 1   # the usual way, same trials
    python -m tuner.bench --suite hpsearch ... --trials-per-gpu 8 [--mps yes]  # 1/8 GPU per trial

Each suite writes ``<out>/bench-<suite>.json`` (rows, summary, command, date, device, versions)
after every measurement, so an interrupted run keeps what it measured, and
``<out>/bench-<suite>.md``; the markdown table is printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from cluster.mps import daemon as mps_daemon
from search_spaces.errors import ConfigError
from tuner.bench.packing import (
    FUSED_MIXES,
    FUSED_SEEDS,
    PackingSetup,
    best_gpus_per_trial,
    run_level,
    save_data,
    with_speedups,
)
from tuner.bench.profile import profile_line
from tuner.bench.record import Record
from tuner.cli import add_set_argument

SUITES = ("trial", "packing", "search", "hpsearch")
DEFAULT_TRIAL_SETTINGS = "trainer-bs32,ours-bs32,ours-bs128,ours-bs128-bf16w,trainer-bs128"
MPS_MODES = {"no": (False,), "yes": (True,), "both": (False, True)}  # packing: levels measured


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
        help="packing: under NVIDIA MPS too (bare --mps: both), only (yes), or not (no); "
        "hpsearch: the baseline under MPS (yes) or not (no)",
    )
    _packing_options(p)
    p.add_argument("--study", action="append", default=[], metavar="NAME=FOLDER",
                   help="search: a Tune experiment folder (repeat: asha=..., fifo=...)")  # fmt: skip
    p.add_argument("--gpus", type=float, help="search: GPUs the studies ran on; hpsearch: GPUs "
                   "the study ran on and the baseline uses (default 1)")  # fmt: skip
    p.add_argument("--trials-per-gpu", type=int, default=1, metavar="N",
                   help="hpsearch: baseline trials sharing each GPU, 1/N of it each (Tune's "
                        "fractional GPUs; with --mps yes under NVIDIA MPS); default 1")  # fmt: skip
    p.add_argument("--experiment", help="hpsearch: the study's (python -m tuner.run --list)")
    p.add_argument("--preset", default="full", help="hpsearch: the study's preset (default full)")
    add_set_argument(p, "hpsearch: the study's --set overrides (repeatable)")
    p.add_argument("--max-trials", type=int, help="hpsearch: the study's first K trials only")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="hpsearch: CPUs per trial")
    p.add_argument("--out", default="bench-results", help="folder for the JSON and markdown")
    return p


def _packing_options(p: argparse.ArgumentParser) -> None:
    """How the packing suite runs its trials: ``--via``, the fused options, the profile."""
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
    p.add_argument(
        "--fused-mix",
        choices=FUSED_MIXES,
        default="same",
        help="packing --via fused: every trial LoRA r=8 on query/value, or trial k's rank "
        "(4, 8, 16, 32), placement (query/value, FFN, every linear) or both cycling",
    )
    p.add_argument("--fused-per-process", type=int, default=0, metavar="F",
                   help="packing --via fused: F trials per process, n / F processes (default: "
                        "all n in one)")  # fmt: skip
    p.add_argument("--profile-steps", type=int, default=0, metavar="S",
                   help="packing --via fused: after each level's timed run, profile S eager "
                        "steps of its model: where a step's time goes (tuner/bench/profile.py)")  # fmt: skip


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    run = {"trial": trial_suite, "packing": packing_suite, "search": search_suite,
           "hpsearch": hpsearch_suite}[args.suite]  # fmt: skip
    record = Record(Path(args.out), args.suite, _command(argv))
    run(args, record)
    print(record.markdown())
    return 0


# --- the suites ------------------------------------------------------------------------------------
# Each suite imports what it runs when it runs: torch, transformers' Trainer, Ray Tune or MLflow
# take seconds to tens of seconds to import, and `--help` or a bad option must answer at once
# (this module alone imports in 0.3 s).


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
    from tuner.bench.packing_tune import measure_tune

    via, levels = packing_options(args)
    device = _device(args.device)
    before = cache_stats()
    data = _prepare(args)  # tokenised once (per split) for every trial of every level
    after = cache_stats()
    work = {"tokenisations": after.misses - before.misses,
            "tokenisation_cache_hits": after.hits - before.hits}  # fmt: skip
    shape = load_backbone(args.backbone, meta=True).shape
    publish = PackingPublisher(record, via, work, _data_summary(data))
    with tempfile.TemporaryDirectory(prefix="peft-tune-packing-") as tmp:
        setup = PackingSetup(backbone=args.backbone, device=device, batch_size=args.batch_size,
                             shape=shape, peak_flops=device_peak_flops(device),
                             workdir=Path(tmp))  # fmt: skip
        if via in ("tune", "pool"):
            measure_tune(levels, setup, data=data, mps=MPS_MODES[args.mps], publish=publish,
                         log=_log, pooled=via == "pool")  # fmt: skip
            return
        data_file = save_data(data, Path(tmp) / "data.pkl")
        for mps in MPS_MODES[args.mps]:  # without MPS first, as the modes list them
            if not mps:
                measure_levels(args, levels, setup, data_file, via=via, mps=False, publish=publish)
                continue
            with mps_daemon(Path(tmp) / "mps") as started:
                if started:
                    measure_levels(args, levels, setup, data_file, via=via, mps=True,
                                   publish=publish)  # fmt: skip
                else:
                    _log("packing: no nvidia-cuda-mps-control here, MPS skipped")


def packing_options(args: argparse.Namespace) -> tuple[str, list[int]]:
    """``--via`` and ``--levels`` of the packing suite, checked with the fused options."""
    from tuner.bench.packing_tune import check_via

    via = check_via(args.via)
    levels = _levels(args.levels)
    per = args.fused_per_process
    fused_only = per or args.fused_seeds != "same" or args.fused_mix != "same" or args.profile_steps
    if via != "fused" and fused_only:
        raise ConfigError(f"--fused-per-process, --fused-seeds, --fused-mix and --profile-steps "
                          f"apply to --via fused, not --via {via}")  # fmt: skip
    if args.profile_steps < 0:
        raise ConfigError(f"--profile-steps {args.profile_steps} must be >= 0")
    if per < 0 or any(n > per and n % per for n in levels if per):
        raise ConfigError(f"--fused-per-process={per} must be >= 0 and divide every level "
                          f"above it: --levels {args.levels}")  # fmt: skip
    return via, levels


def measure_levels(
    args: argparse.Namespace,
    levels: list[int],
    setup: PackingSetup,
    data_file: Path,
    *,
    via: str,
    mps: bool,
    publish: PackingPublisher,
) -> None:
    """Each level as processes the bench starts (``--via processes`` or ``fused``)."""
    under = " under MPS" if mps else ""
    if via == "fused":  # one trial alone as the baseline, then each level fused
        _log(f"packing: 1 trial alone (the baseline){under}")
        publish(run_level(1, setup, data_file=data_file, mps=mps))
    for n in levels:
        fuse = min(n, args.fused_per_process or n) if via == "fused" else 0
        how = f", fused {fuse} per process" if fuse else ""
        _log(f"packing: {n} trial(s){how}{under}")
        publish(run_level(n, setup, data_file=data_file, mps=mps, fuse=fuse,
                          fused_seeds=args.fused_seeds, fused_mix=args.fused_mix,
                          profile_steps=args.profile_steps))  # fmt: skip


class PackingPublisher:
    """Takes each measured packing row: the record is rewritten with every row so far, their
    speed-ups and the summary (``work``: tokenisation counts; ``data``: the data's size)."""

    def __init__(
        self, record: Record, via: str, work: dict[str, Any], data: dict[str, Any]
    ) -> None:
        self.record, self.via, self.work, self.data = record, via, work, data
        self.rows: list[Any] = []

    def __call__(self, row: Any) -> None:
        via = self.via
        self.rows.append(row)
        done = with_speedups(self.rows)
        # keyed by level (+ "-mps"), + "-tune" for the baseline of --via pool
        walls = {f"{r.concurrent}{'-mps' if r.mps else ''}{'' if r.via == via else '-' + r.via}":
                 (r.wall_s, r.wall_samples_per_s)
                 for r in done if r.wall_s and r.wall_samples_per_s is not None}  # fmt: skip
        tune_wall = {"tune_wall_s": {k: round(s, 1) for k, (s, _) in walls.items()},
                     "tune_wall_samples_per_s": {k: round(v) for k, (_, v) in walls.items()}
                     } if walls else {}  # fmt: skip
        profiles = {f"profile at {r.concurrent}{' under MPS' if r.mps else ''}":
                    profile_line(r.profile) for r in done if r.profile}  # fmt: skip
        self.record.set_rows([r.to_dict() for r in done], **self.work, via=via, **profiles,
                             best_gpus_per_trial=best_gpus_per_trial(
                                 [r for r in done if not r.mps and r.via not in ("fused", "pool")]),
                             **tune_wall, **self.data)  # fmt: skip
        wall = f", whole Tune run {row.wall_s:,.1f} s" if row.wall_s is not None else ""
        _log(f"  aggregate {done[-1].aggregate_samples_per_s:,.0f} samples/s{wall}")


def search_suite(args: argparse.Namespace, record: Record) -> None:
    from tuner.bench.search import compare_studies, same_best

    studies = {}
    for item in args.study:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            raise ConfigError(f"--study {item!r} must be NAME=FOLDER with an existing folder")
        studies[name] = folder
    if not studies:
        raise ConfigError("--suite search needs --study NAME=FOLDER (e.g. asha=..., fifo=...)")
    rows = compare_studies(studies, gpus=args.gpus)
    chosen = {f"best {m} on dev": said for m, said in same_best(rows).items()}
    slowest = {f"slowest trial of {r.study}": f"{r.slowest_trial} ({r.slowest_trial_s:,.1f} s; "
               f"alone: python -m tuner.train --trial {r.slowest_trial})"
               for r in rows if r.slowest_trial}  # fmt: skip
    record.set_rows([r.to_dict() for r in rows], **chosen, **slowest)


def hpsearch_suite(args: argparse.Namespace, record: Record) -> None:
    """A finished study's configs run the usual way (``Trainer.hyperparameter_search`` on Ray
    Tune, one trial per GPU or ``--trials-per-gpu`` sharing each, ``--mps yes`` under MPS):
    per-trial dev scores beside the study's, trials per GPU-hour, time to near the best."""
    from tuner.bench.hpsearch import BaselineSetup, baseline_of_study
    from tuner.experiments import get_experiment
    from tuner.overrides import apply_sets, parse_sets

    name, sep, folder = (args.study[0] if len(args.study) == 1 else "").partition("=")
    if not sep or not args.experiment:
        raise ConfigError("--suite hpsearch needs one --study NAME=FOLDER (a finished study) and "
                          "--experiment NAME with the study's --preset and --set")  # fmt: skip
    if args.mps == "both":
        raise ConfigError("--mps both: --suite hpsearch runs one baseline per call; pass --mps "
                          "yes or no")  # fmt: skip
    exp = apply_sets(get_experiment(args.experiment).with_preset(args.preset), parse_sets(args.set))
    setup = BaselineSetup(
        device=_device(args.device), gpus=1.0 if args.gpus is None else args.gpus,
        cpus_per_trial=args.cpus_per_trial, storage=Path(args.out).resolve() / "hpsearch-tune",
        max_trials=args.max_trials, data_dir=args.data_dir, per_gpu=args.trials_per_gpu,
        mps=args.mps == "yes",
    )  # fmt: skip
    with _under_mps(setup.mps):
        rows, summary = baseline_of_study(folder, exp, setup, study_name=name, log=_log)
    record.set_rows([r.to_dict() for r in rows], **summary)


@contextlib.contextmanager
def _under_mps(on: bool) -> Iterator[None]:
    """The block under an NVIDIA MPS daemon of its own (``on``), or as is; refused where none
    starts. The local Ray cluster started in the block inherits its pipe directory."""
    if not on:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="peft-tune-mps-") as tmp, mps_daemon(Path(tmp)) as up:
        if not up:
            raise ConfigError("--mps yes: nvidia-cuda-mps-control is not here or did not start; "
                              "run without MPS (--mps no)")  # fmt: skip
        yield


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
