"""``python -m tuner.train``: run one configuration in-process, without Ray, and print its metrics.

    python -m tuner.train --task glue/sst2 --method lora --set rank=8 --train-samples 2000
    python -m tuner.train --task tweet_eval/sentiment --method lora_fusion \\
        --set sources=glue/sst2,imdb --set fusion_layers=5 --json
    python -m tuner.train --task glue/sst2 --method lora --fuse lr=5e-4,1e-3,2e-3   # one model
    python -m tuner.train --trial RESULTS/e4_budget-full/trial_ab12cd34   # a study's trial, alone

The way to debug one configuration: the same recipe as a Ray trial (data, method, loop,
evaluation), its evaluations printed as they happen. Fusion methods train (or reuse) their
source adapters first, from the same store as the studies. ``--fuse KEY=V1,V2,...`` trains one
LoRA configuration per value as one fused model (trainables/fused.py): a sweep in one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from search_spaces.catalog import FUSABLE_METHODS
from search_spaces.errors import ConfigError
from search_spaces.method_config import FUSION_METHODS, check_quantize
from trainables.backbone_registry import backbone_source
from tuner.cli import add_set_argument, parse_sets, run_cli

SHOWN = ("dev_score", "test_score", "trainable_params", "added_params", "train_samples_per_s",
         "latency_ms", "wall_s")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.train", description=__doc__.split("\n")[0])
    p.add_argument("--task", help="a registered task or a data folder")
    p.add_argument("--method", help="a registered method (python -m tuner.params --table)")
    p.add_argument("--trial", metavar="FOLDER",
                   help="a study's trial folder: its configuration (task, method, backbone and "
                        "every knob, from its result.json), run alone; the other options "
                        "override it")  # fmt: skip
    p.add_argument("--backbone", help="default: minilm-l6")
    p.add_argument("--head", help="mean (pooling, the default) or cls (pooler)")
    add_set_argument(p, "method or training keys, e.g. --set rank=8 lr=1e-3 (repeatable)")
    p.add_argument("--train-samples", type=int, help="stratified subset of the train split")
    p.add_argument("--epochs", type=float, help="training epochs")
    p.add_argument("--data-dir", help="local data mirror (default $PEFT_TUNE_DATA_DIR)")
    p.add_argument("--fuse", metavar="KEY=V1,V2,...",
                   help="one trial per value of KEY (e.g. lr, rank, seed), all trained as one "
                        f"fused model (methods: {', '.join(FUSABLE_METHODS)}); prints a line "
                        "per trial")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    return p


DEFAULTS = {"backbone": "minilm-l6", "head": "mean"}


def trial_config(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration to run: ``--trial``'s, or the defaults, then the options over it;
    ``args`` gets the task, method, backbone and row count it names."""
    base = study_trial(args.trial) if args.trial else dict(DEFAULTS)
    given = {"method": args.method, "backbone": args.backbone, "head": args.head,
             "task": args.task, "epochs": args.epochs, "train_samples": args.train_samples}  # fmt: skip
    config: dict[str, Any] = {**base, **{k: v for k, v in given.items() if v is not None},
                              **parse_sets(args.set)}  # fmt: skip
    missing = [k for k in ("task", "method") if config.get(k) is None]
    if missing:
        raise ConfigError(f"--{missing[0]} is needed (or --trial FOLDER, a study's trial)")
    rows = config.get("train_samples")
    if rows is not None:
        if not str(rows).isdigit() or int(rows) <= 0:
            raise ConfigError(f"train_samples={rows!r} must be a whole number > 0")
        config["train_samples"] = int(rows)
    backbone_source(config["backbone"])  # an unknown name is refused before torch is imported
    args.task, args.method, args.backbone = config["task"], config["method"], config["backbone"]
    args.train_samples = config.get("train_samples")
    return {k: v for k, v in config.items() if v is not None}


def study_trial(folder: str) -> dict[str, Any]:
    """The configuration a study's trial ran with: the last report of its ``result.json``."""
    result = Path(folder) / "result.json"
    lines = result.read_text().splitlines() if result.is_file() else []
    reports = [json.loads(line) for line in lines if line.strip()]
    if not reports or not isinstance(reports[-1].get("config"), dict):
        raise ConfigError(f"--trial {folder!r}: no {result.name} with a config there (a study's "
                          f"trial folder, <storage>/<experiment>-<preset>/trial_...)")  # fmt: skip
    config = dict(reports[-1]["config"])
    for knob, value in knobs_it_predates(Path(folder)).items():
        if knob not in config:
            config[knob] = value
            log(f"the trial predates {knob} (its checkpoint's recipe has none): run with "
                f"{knob}={value} as it trained (--set {knob}=... to override)")  # fmt: skip
    return config


def knobs_it_predates(folder: Path) -> dict[str, float]:
    """The recipe knobs added since the trial's last readable checkpoint was saved, each with
    the value it trained as (``trainables.train_config.ADDED_KNOBS``); none without one."""
    from trainables.checkpoint_files import LOOP_STATE, saved_recipe
    from trainables.train_config import knobs_missing

    for state in sorted(folder.glob(f"checkpoint_*/{LOOP_STATE}"), reverse=True):
        recipe = saved_recipe(state)
        if recipe is not None:
            return knobs_missing(recipe)
    return {}


def refuse_unrunnable_quantize(config: dict[str, Any], *, fuse: bool) -> None:
    """A quantised configuration that cannot run here is refused now, before any data or model
    is loaded: a bad value or method, ``--fuse`` (its rows share one unquantised backbone), or a
    host without CUDA (bitsandbytes 4-bit)."""
    quantize = config.get("quantize", "none")
    check_quantize(config["method"], quantize)
    if quantize == "none":
        return
    if fuse:
        raise ConfigError(
            f"--fuse trains unquantised LoRA rows only; drop --fuse or quantize={quantize!r}"
        )
    from trainables.quantize import require_cuda  # torch: only for a quantised config

    require_cuda(quantize)


def refuse_own_task_source(task: str, config: dict[str, Any]) -> None:
    """A fusion whose sources include the target task is refused before any data is read."""
    from search_spaces.method_config import MethodConfig, coerce
    from tuner.experiment import own_task_source

    field = MethodConfig.__dataclass_fields__["sources"]  # read as MethodConfig reads `--set`
    raw = config.get("sources")
    sources = coerce("sources", raw, field.type) if raw else ()
    if task in sources:
        raise ConfigError(own_task_source(task, sources))


def fused_configs(config: dict[str, Any], fuse: str) -> list[dict[str, Any]]:
    """``config`` once per value of ``--fuse KEY=V1,V2,...``."""
    key, sep, values = fuse.partition("=")
    choices = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or len(choices) < 2:
        raise ConfigError(f"--fuse {fuse!r} must be KEY=V1,V2,... with two values or more")
    if config.get("method") not in FUSABLE_METHODS:
        raise ConfigError(f"--fuse trains method in {list(FUSABLE_METHODS)} only, "
                          f"not method={config.get('method')!r}")  # fmt: skip
    return [{**config, key.strip(): value} for value in choices]


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    config = trial_config(args)
    refuse_unrunnable_quantize(config, fuse=bool(args.fuse))
    configs = fused_configs(config, args.fuse) if args.fuse else [config]
    for each in configs:  # --fuse sources=...: every one of them
        refuse_own_task_source(args.task, each)
    from trainables.backbones import load_backbone
    from trainables.recipe import run_trial, split_config
    from trainables.train_config import TrainConfig
    from tuner.prepare import prepare

    trains = [
        TrainConfig.from_dict({k: v for k, v in c.items() if k in TrainConfig.__dataclass_fields__})
        for c in configs
    ]
    if args.fuse:
        from trainables.fused import check_configs

        check_configs(trains)  # before any data or model
    train = trains[0]
    backbone = load_backbone(args.backbone, meta=True)
    backbone.shape.check_max_length(train.max_length, args.backbone)
    data = prepare(args.task, tokenizer=backbone.tokenizer, max_length=train.max_length,
                   train_samples=args.train_samples, data_dir=args.data_dir, seed=train.seed)  # fmt: skip
    for each in configs:
        method_config, _ = split_config(each, num_labels=data.num_labels)  # bad keys fail here
    if method_config.method in FUSION_METHODS:
        data = _with_sources(args, method_config, data, max_length=train.max_length)
    log(f"{args.task}: train={len(data.train):,} dev={len(data.dev):,} test={len(data.test):,}")

    def report(metrics: dict[str, Any], folder: object) -> None:
        shown = "  ".join(f"{k}={_fmt(metrics[k])}" for k in SHOWN if k in metrics)
        log(f"evaluation {metrics.get('evaluation', '-')}: {shown}")

    started = time.perf_counter()
    key = args.fuse.partition("=")[0].strip() if args.fuse else None
    if key:
        from trainables.recipe import run_fused

        finals = run_fused(configs, data)
        for each, final in zip(configs, finals, strict=True):
            final["wall_s"] = time.perf_counter() - started  # the whole sweep
            shown = "  ".join(f"{k}={_fmt(final[k])}" for k in SHOWN if k in final)
            log(f"{key}={each[key]}: {shown}")
    else:
        finals = [run_trial(config, data, report=report)]
        finals[0]["wall_s"] = time.perf_counter() - started
    for each, final in zip(configs, finals, strict=True):
        flag_unlearned(final, f"{key}={each[key]}: " if key else "")
    if args.json:
        print(json.dumps(finals if args.fuse else finals[0], indent=2, sort_keys=True, default=str))
    return 0 if all(f.get("status") == "completed" for f in finals) else 1


def _with_sources(
    args: argparse.Namespace, method_config: Any, data: Any, *, max_length: int
) -> Any:
    """Train (or reuse) the source adapters in-process, as the study's stage would."""
    import dataclasses

    from trainables.source_store import AdapterStore
    from tuner.experiment import Experiment, Search
    from tuner.sources import needed_specs, source_data_of, train_source_adapter

    exp = Experiment(name="train", summary="", task=args.task, backbone=args.backbone,
                     search=Search(kind="grid", configs=({"method": "lora"},),
                                   sources=method_config.sources),
                     train_samples=args.train_samples)  # fmt: skip
    store = AdapterStore()
    specs = needed_specs(exp, (method_config.bottleneck,), max_length=max_length)
    missing = [spec for spec in specs if store.get(spec) is None]
    for spec, source in source_data_of(missing, backbone=args.backbone, data_dir=args.data_dir):
        log(f"training source adapter {spec.source} (bottleneck {spec.bottleneck})")
        train_source_adapter(spec, source, str(store.root))
    folders = {spec.source: store.get(spec) for spec in specs}
    return dataclasses.replace(data, source_adapters={method_config.bottleneck: folders})


def flag_unlearned(final: dict[str, Any], label: str) -> None:
    """A line for a completed run whose dev score did not beat the majority class (or the
    head-only probe, where the data holds its score): the studies' rule, ``learning_flag``."""
    from analysis.selection import MAJORITY, PROBE, learning_flag

    flag = learning_flag(final.get("dev_score"), final.get(MAJORITY), final.get(PROBE))
    if final.get("status") == "completed" and flag:
        against = " ".join(f"{k}={_fmt(final[k])}" for k in (MAJORITY, PROBE) if k in final)
        log(f"{label}{flag}: dev_score={_fmt(final['dev_score'])}, {against}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def log(message: str) -> None:
    print(f"[peft-tune] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
