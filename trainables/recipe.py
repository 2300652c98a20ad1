"""One trial, top to bottom: parse config → build backbone → apply method → train → evaluate → report.

Used by the Ray Tune trainable and, without Ray, by ``python -m tuner.train``. It knows nothing
about Ray: results go to a ``report(metrics, checkpoint_dir)`` function and a checkpoint to
resume from comes in as a folder.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from search_spaces.spaces import default_lr
from trainables.backbones import load_backbone
from trainables.faults import inject_fault
from trainables.flops import trial_mfu
from trainables.loop import evaluate, fit, measure_latency
from trainables.methods import build_model
from trainables.prepared import PreparedData, subsample
from trainables.source_store import check_intact
from trainables.train_config import TrainConfig

Report = Callable[[dict[str, Any], Path | None], None]
WEIGHTS = "method.safetensors"
LOOP_STATE = "loop_state.pt"
METHOD_STATE = "method_state.pt"  # what a method keeps beside its weights (AdaLoRA's rank pattern)
# Trial-level keys that are neither method nor training knobs (kept in the config for MLflow).
META_KEYS = frozenset({
    "task", "backbone", "budget_params", "tolerance", "accounting", "trainable_params",
    "added_params", "budget_deviation", "train_samples", "fault",
})  # fmt: skip


def split_config(config: dict[str, Any], *, num_labels: int) -> tuple[MethodConfig, TrainConfig]:
    """Split a flat trial config into the method's and the loop's configs; refuse unknown keys."""
    method_keys = {f.name for f in fields(MethodConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(config) - method_keys - train_keys - META_KEYS)
    if unknown:
        allowed = ", ".join(sorted(method_keys | train_keys | META_KEYS))
        raise ConfigError(f"unknown config key {unknown[0]!r}; known keys: {allowed}")
    method = {k: v for k, v in config.items() if k in method_keys and v is not None}
    method["num_labels"] = num_labels
    method_config = MethodConfig.from_dict(method)
    train = {k: v for k, v in config.items() if k in train_keys and v is not None}
    # a config without a rate trains at its own method's (the middle of its search range, whose
    # sources LR_RANGES cites), never at another method's: full fine-tuning at LoRA's 1e-3 diverges
    train.setdefault("lr", default_lr(method_config.method))
    return method_config, TrainConfig.from_dict(train)


def run_trial(
    config: dict[str, Any],
    data: PreparedData,
    *,
    report: Report,
    resume_from: Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train one configuration and report every evaluation; returns the last metrics reported."""
    entered = time.perf_counter()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
    method_config, train_config = split_config(config, num_labels=data.num_labels)
    data = subsample(data, config.get("train_samples"), seed=train_config.seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(train_config.seed)
    backbone = load_backbone(config.get("backbone", "minilm-l6"))
    sources = data.adapters_for(method_config.bottleneck)
    for folder in (sources or {}).values():
        check_intact(folder)  # changed since the driver checked it: refused, never used
    model = build_model(
        method_config,
        backbone,
        source_adapters=sources,
        total_steps=train_config.total_steps(len(data.train)),
    ).to(device)
    state = None
    if resume_from is not None:
        model.load_method_weights(resume_from / WEIGHTS)
        if (resume_from / METHOD_STATE).exists():
            model.load_method_extra_state(torch.load(resume_from / METHOD_STATE, weights_only=True))
        state = torch.load(resume_from / LOOP_STATE, weights_only=True)
    counts = {"trainable_params": model.trainable_params(), "added_params": model.added_params()}
    last: dict[str, Any] = {}
    started = time.perf_counter()
    # where a trial's time goes besides training: model build (backbone, method, source adapters)
    setup_s = started - entered
    best = {"best_dev_score": float("-inf"), "time_to_best_s": 0.0}

    def on_eval(ev: Any) -> bool:
        metrics = {
            **counts,
            "setup_s": setup_s,
            "evaluation": ev.evaluation,
            "fidelity": ev.evaluation / train_config.evals,
            "step": ev.step,
            "epoch": ev.epoch,
            "train_loss": ev.train_loss,
            "dev_loss": ev.dev_loss,
            "dev_score": ev.dev_score,
            **{f"dev_{k}": v for k, v in ev.dev_metrics.items() if k != "score"},
            "train_samples_per_s": ev.train_samples_per_s,
            "graphed_steps": ev.graphed_steps,  # 0: every step eager (CPU, or not graph-safe)
            "mfu": trial_mfu(model, ev, device),  # None on CPU: no known peak
            "wall_s": time.perf_counter() - started,
            "status": "running",
        }
        if ev.dev_score > best["best_dev_score"]:  # every task metric is maximised
            best.update(best_dev_score=ev.dev_score, time_to_best_s=metrics["wall_s"])
        metrics.update(best)
        if resume_from is None:
            inject_fault(config.get("fault"), ev.evaluation)
        if ev.evaluation == train_config.evals:
            final_started = time.perf_counter()
            metrics.update(final_metrics(model, data, train_config, device))
            metrics["final_s"] = time.perf_counter() - final_started  # test split, latency
            metrics["status"] = "completed"
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            model.save_method_weights(folder / WEIGHTS)
            torch.save(ev.state(), folder / LOOP_STATE)
            if extra := model.method_extra_state():
                torch.save(extra, folder / METHOD_STATE)
            (folder / "method_config.json").write_text(_json(method_config.to_dict()))
            report(metrics, folder)
        last.clear()
        last.update(metrics)
        return False

    result = fit(
        model, data.train, data.dev, train_config,
        task_kind=data.task_kind, metric=data.metric, on_eval=on_eval, state=state, device=device,
    )  # fmt: skip
    if result.status == "oom":
        last.update({**counts, "status": "oom", "peak_mem_mib": result.peak_mem_mib})
        report(last, None)
    return last


def run_fused(
    configs: list[dict[str, Any]], data: PreparedData, *, device: str | None = None
) -> list[dict[str, Any]]:
    """Train LoRA ``configs`` as one fused model (:mod:`trainables.fused`); each trial's final
    metrics, as :func:`run_trial` reports them at its last evaluation. The training subset
    (``train_samples``) is drawn with the first trial's seed, the data every fused trial shares."""
    from trainables.fused import FusedLoRA, check_configs, fit_fused

    splits = [split_config(c, num_labels=data.num_labels) for c in configs]
    check_configs([t for _, t in splits])  # before building any model
    first = splits[0][1]
    data = subsample(data, configs[0].get("train_samples"), seed=first.seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    members = []
    for config, (method_config, train_config) in zip(configs, splits, strict=True):
        torch.manual_seed(train_config.seed)  # each trial's initialisation, as run_trial draws it
        backbone = load_backbone(config.get("backbone", "minilm-l6"))
        members.append(build_model(method_config, backbone).to(device))
    results = fit_fused(
        FusedLoRA(members), data.train, data.dev, [t for _, t in splits],
        task_kind=data.task_kind, metric=data.metric, device=device,
    )  # fmt: skip
    out = []
    for model, result, (_, train_config) in zip(members, results, splits, strict=True):
        out.append({
            "trainable_params": model.trainable_params(), "added_params": model.added_params(),
            "dev_score": result.dev_metrics["score"], "best_dev_score": result.best_dev_score,
            "train_samples_per_s": result.train_samples_per_s, "wall_s": result.wall_s,
            "status": result.status, **final_metrics(model, data, train_config, device),
        })  # fmt: skip
    return out


def final_metrics(
    model: Any, data: PreparedData, config: TrainConfig, device: str
) -> dict[str, float]:
    """Test-split scores (the reported split), extra evaluation sets and inference latency;
    ``trained_at``, the wall clock (``time.time()``) as training and its last dev evaluation
    ended, dates the trial: its training began at ``trained_at - wall_s`` (tuner.bench)."""
    kwargs = {"task_kind": data.task_kind, "metric": data.metric,
              "batch_size": config.eval_batch_size, "device": device}  # fmt: skip
    out: dict[str, float] = {"trained_at": time.time()}
    test_loss, test = evaluate(model, data.test, **kwargs)
    out["test_score"] = test["score"]
    out.update({f"test_{k}": v for k, v in test.items() if k != "score"})
    for name, split in data.extra_tests.items():
        _, scores = evaluate(model, split, **kwargs)
        out[f"shift_{name}_score"] = scores["score"]
    out.update(data.baselines())  # did it learn? the majority class's score beside the trial's
    out.update(model.method_metrics())  # AdaLoRA's final ranks, fusion entropy, grown ranks
    out.update(model.memory_metrics())  # base_mib, adapter_mib: the QLoRA memory table (#24)
    out["latency_ms"] = measure_latency(model, data.dev, device=device)
    if model.config.method == "lora":  # merged LoRA: the same function, no added latency
        merged = copy.deepcopy(model)
        merged.merge()
        out["latency_merged_ms"] = measure_latency(merged, data.dev, device=device)
    if torch.cuda.is_available() and device.startswith("cuda"):
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=list)
