"""``python -m tuner.run NAME``: run a registered experiment as a Ray Tune study.

python -m tuner.run e4_budget --preset demo
python -m tuner.run e4_budget --dry-run --json
python -m tuner.run --list
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from search_spaces.catalog import FUSABLE_METHODS, POOLED_BY_DEFAULT
from search_spaces.errors import ConfigError
from search_spaces.row_groups import DEFAULT_SLOTS
from tuner.cli import add_set_argument, run_cli
from tuner.experiment import PRESETS, Experiment
from tuner.experiments import all_experiments, get_experiment
from tuner.overrides import apply_sets, parse_sets


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.run", description=__doc__.split("\n")[0])
    p.add_argument("name", nargs="?", help="experiment name (see --list)")
    p.add_argument("--preset", default="full", help=f"one of {', '.join(PRESETS)} (default full)")
    add_set_argument(
        p, "override method, training or search keys: --set rank=8 lr=1e-3 (repeatable)"
    )
    p.add_argument("--num-samples", type=int, help="number of trials")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="fractional GPUs per trial (default 0.125 where the cluster has GPUs)",
    )
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default 1)")
    p.add_argument(
        "--fuse",
        type=int,
        metavar="K",
        help="train K trials at once as rows of one fused model per fused group (trials of one "
        "row signature), one pool of groups per GPU of the cluster (studies of fusable methods: "
        f"{', '.join(FUSABLE_METHODS)}; docs/TRAINING.md, docs/CLUSTER.md). Default on a GPU "
        f"cluster: {DEFAULT_SLOTS} where every method the study tries is pooled by default "
        f"({', '.join(POOLED_BY_DEFAULT)}) and it does not time its trials, else 0; 0: one "
        "trial per actor",
    )
    p.add_argument("--storage", help="results folder or pyarrow.fs URI shared by all nodes")
    p.add_argument("--tracking-uri", help="MLflow URI: a folder, sqlite:///..., http://...")
    p.add_argument("--data-dir", help="local data mirror (default $PEFT_TUNE_DATA_DIR)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted study")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start again where the results folder already holds this study (its folders are "
        "deleted first; its MLflow runs stay, as an earlier run)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the first configurations, run nothing"
    )
    p.add_argument(
        "--json", action="store_true", help="machine-readable output (--dry-run, --list)"
    )
    p.add_argument("--list", action="store_true", help="list the registered experiments")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.list:
        return list_experiments(as_json=args.json)
    sets = parse_sets(args.set)  # first: a NAME typed after --set is one of its words
    if not args.name:
        raise ConfigError("an experiment NAME is required (see --list)")
    exp = get_experiment(args.name).with_preset(args.preset)
    exp = apply_sets(exp, sets)
    if args.num_samples is not None:
        if args.num_samples <= 0:
            raise ConfigError(f"--num-samples={args.num_samples} must be > 0")
        exp = dataclasses.replace(exp, num_samples=args.num_samples)

    from tuner.space import build_space, first_configs  # noqa: PLC0415 (keeps --list fast)

    space = build_space(exp)
    if args.dry_run:
        configs = first_configs(exp, space, n=min(exp.num_samples, 10))
        print_dry_run(exp, configs, as_json=args.json)
        return 0

    refuse_unrunnable_quantize(exp, args)
    from tuner.launch import launch  # noqa: PLC0415

    started = time.time()
    launch(exp, space, preset=args.preset, args=args)
    print(f"done in {time.time() - started:.0f} s", file=sys.stderr)
    return 0


def study_quantize(exp: Experiment) -> set[str]:
    """The ``quantize`` values the study's trials may run with: each arm's own, else the study's
    fixed one (``--set quantize=...``)."""
    fixed = exp.search.fixed.get("quantize", "none")
    arms = exp.search.configs
    return {arm.get("quantize", fixed) for arm in arms} if arms else {fixed}


def refuse_unrunnable_quantize(exp: Experiment, args: argparse.Namespace) -> None:
    """A study with quantised trials that cannot run is refused before any data is prepared or
    Ray starts: with ``--fuse`` (its rows share one unquantised backbone), with no GPU per trial,
    or, on a local Ray cluster (no ``RAY_ADDRESS``), on a host without CUDA. A study submitted to a
    cluster is checked by each trial (``trainables.quantize.quantize_backbone``)."""
    quantized = sorted(study_quantize(exp) - {"none"})
    if not quantized:
        return
    if args.fuse:
        raise ConfigError(f"--fuse trains unquantised LoRA rows only; {exp.name} has "
                          f"quantize={quantized[0]!r} trials: drop --fuse")  # fmt: skip
    if args.gpus_per_trial is not None and args.gpus_per_trial <= 0:
        raise ConfigError(f"--gpus-per-trial {args.gpus_per_trial} runs {exp.name}'s "
                          f"quantize={quantized[0]!r} trials on CPU; bitsandbytes 4-bit needs a GPU")  # fmt: skip
    if os.environ.get("RAY_ADDRESS"):
        return
    from trainables.quantize import require_cuda  # noqa: PLC0415 (torch)

    require_cuda(quantized[0], where="this host (the study's local Ray cluster)")


def list_experiments(*, as_json: bool) -> int:
    exps = all_experiments()
    if as_json:
        print(json.dumps([{"name": e.name, "task": e.task, "summary": e.summary} for e in exps]))
        return 0
    width = max(len(e.name) for e in exps)
    for e in exps:
        print(f"{e.name:{width}}  {e.summary}")
    return 0


KNOBS = ("method", "rank", "placement", "layer_ranks", "bottleneck", "target_bottleneck", "fusion",
         "fusion_layers", "sources", "prefix_length", "quantize", "lr")  # fmt: skip


def _fmt(value: object) -> str:
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def print_dry_run(exp: object, configs: list[dict], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(configs, indent=2, default=str))
        return
    for i, c in enumerate(configs, 1):
        knobs = " ".join(
            f"{k}={_fmt(c[k])}" for k in KNOBS if c.get(k) not in (None, "", 0, "none")
        )
        dev = c.get("budget_deviation")
        dev_txt = f" deviation={dev:+.2%}" if isinstance(dev, float) else ""
        print(f"{i:2d}. trainable={c.get('trainable_params', 0):,} added={c.get('added_params', 0):,}"
              f"{dev_txt}  {knobs}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(run_cli(main))
