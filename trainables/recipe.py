"""One trial, top to bottom: parse config → build backbone → apply method → train → evaluate → report.

Used by the Ray Tune trainable and, without Ray, by ``python -m tuner.train``. It knows nothing
about Ray: results go to a ``report(metrics, checkpoint_dir)`` function and a checkpoint to
resume from comes in as a folder.
"""

from __future__ import annotations

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
from search_spaces.row_groups import group_template
from search_spaces.spaces import default_lr
from trainables.backbones import load_backbone
from trainables.checkpoint_files import LOOP_STATE, METHOD_STATE, WEIGHTS
from trainables.faults import inject_fault
from trainables.fused import FusedLoRA, FusedRows, check_configs, fit_fused, fuse_lora
from trainables.methods import build_model
from trainables.metrics import get_metric
from trainables.model import PeftClassifier
from trainables.prepared import PreparedData, subsample
from trainables.probe import cached_probe_head
from trainables.source_store import check_intact
from trainables.train_config import TrainConfig
from trainables.training.loop import fit
from trainables.training.progress import EvalReport
from trainables.training.report import TrialReporter, result_report

Report = Callable[[dict[str, Any], Path | None], None]
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
    train_config = TrainConfig.from_dict(train)
    if train_config.head_init == "probe" and method_config.head != "mean":
        raise ConfigError(f"head_init='probe' fits the mean-pooling head (head='mean'), not "
                          f"head={method_config.head!r}: drop one of them")  # fmt: skip
    return method_config, train_config


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
    model, state = build_trial_model(
        method_config, train_config, data, backbone=str(config.get("backbone", "minilm-l6")),
        device=device, resume_from=resume_from,
    )  # fmt: skip
    last: dict[str, Any] = {}
    reporter = TrialReporter(model, train_config, mode=get_metric(data.metric).mode, device=device)
    # where a trial's time goes besides training: model build (backbone, method, source adapters)
    setup_s = reporter.started - entered

    def on_eval(ev: EvalReport) -> bool:
        metrics = reporter.evaluation(ev, setup_s=setup_s, graphed_steps=ev.graphed_steps,
                                      cuda_graph_capture_s=round(ev.capture_s, 3))  # fmt: skip
        if resume_from is None:
            inject_fault(config.get("fault"), ev.evaluation)
        if reporter.last(ev):
            reporter.finish(metrics, data)
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(model, method_config, ev, Path(tmp))
            report(metrics, Path(tmp))
        last.clear()
        last.update(metrics)
        return False

    result = fit(
        model, data.train, data.dev, train_config,
        task_kind=data.task_kind, metric=data.metric, on_eval=on_eval, state=state, device=device,
    )  # fmt: skip
    if result.status == "oom":
        last.update({**reporter.counts, "status": "oom", "peak_mem_mib": result.peak_mem_mib})
        report(last, None)
    return last


def build_trial_model(
    method: MethodConfig,
    train: TrainConfig,
    data: PreparedData,
    *,
    backbone: str,
    device: str,
    resume_from: Path | None = None,
) -> tuple[PeftClassifier, dict[str, Any] | None]:
    """The trial's model on ``device``, initialised from its seed, its head as ``head_init``
    says (``data.train``: the trial's own rows); with ``resume_from``, the checkpoint's weights
    (its trained head) and the loop state to resume from (else None)."""
    torch.manual_seed(train.seed)
    loaded = load_backbone(backbone)
    head = None
    if train.head_init == "probe" and resume_from is None:  # a checkpoint holds the trained head
        # embedded before the method changes the backbone, which the fit leaves as it found it
        # (on its device, in eval mode), as it leaves the seeded generator
        head = cached_probe_head(data, backbone=backbone, device=device, bert=loaded.model)
    sources = data.adapters_for(method.bottleneck)
    for folder in (sources or {}).values():
        check_intact(folder)  # changed since the driver checked it: refused, never used
    model = build_model(
        method, loaded, source_adapters=sources, total_steps=train.total_steps(len(data.train))
    ).to(device)
    if head is not None:
        head.copy_to(model.classifier)
    state = None if resume_from is None else load_checkpoint(model, resume_from)
    return model, state


def save_checkpoint(model: Any, method: MethodConfig, ev: EvalReport, folder: Path) -> None:
    """What a trial resumes from into ``folder``: the method's weights (and extra state), the
    loop state after evaluation ``ev``, and the method config (for a reader)."""
    model.save_method_weights(folder / WEIGHTS)
    torch.save(ev.state(), folder / LOOP_STATE)
    if extra := model.method_extra_state():
        torch.save(extra, folder / METHOD_STATE)
    (folder / "method_config.json").write_text(_json(method.to_dict()))


def load_checkpoint(model: Any, folder: Path) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` folder's weights into ``model``; its loop state."""
    model.load_method_weights(folder / WEIGHTS)
    if (folder / METHOD_STATE).exists():
        model.load_method_extra_state(torch.load(folder / METHOD_STATE, weights_only=True))
    return torch.load(folder / LOOP_STATE, weights_only=True)


def run_fused(
    configs: list[dict[str, Any]], data: PreparedData, *, device: str | None = None
) -> list[dict[str, Any]]:
    """Train ``configs`` as one fused model (:mod:`trainables.fused`: plain LoRA as
    :class:`FusedLoRA`, the other fusable methods as :class:`FusedRows` over a template of the
    largest sizes); each trial's final metrics, as :func:`run_trial` reports them at its last
    evaluation. The training subset (``train_samples``) is drawn with the first trial's seed,
    the data every fused trial shares."""
    splits = [split_config(c, num_labels=data.num_labels) for c in configs]
    check_configs([t for _, t in splits])  # before building any model
    first = splits[0][1]
    data = subsample(data, configs[0].get("train_samples"), seed=first.seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = str(configs[0].get("backbone", "minilm-l6"))
    model, members = build_fused(splits, data, backbone=backbone, device=device)
    results = fit_fused(
        model, data.train, data.dev, [t for _, t in splits],
        task_kind=data.task_kind, metric=data.metric, device=device,
    )  # fmt: skip
    return [
        result_report(member, result, data, train_config, device)
        for member, result, (_, train_config) in zip(members, results, splits, strict=True)
    ]


def build_fused(
    splits: list[tuple[MethodConfig, TrainConfig]],
    data: PreparedData,
    *,
    backbone: str,
    device: str,
) -> tuple[FusedLoRA | FusedRows, list[PeftClassifier]]:
    """The fused model of the trials ``splits`` (:func:`split_config`'s) on ``data`` (the rows
    all of them train on) and its members, each initialised as :func:`run_trial` would (its
    seed, its ``head_init``)."""
    first = splits[0][1]

    def build(method: MethodConfig, seed: int) -> PeftClassifier:
        torch.manual_seed(seed)  # each trial's initialisation, as run_trial draws it
        sources = data.adapters_for(method.bottleneck) if method.sources else None
        return build_model(method, load_backbone(backbone), source_adapters=sources).to(device)

    members = [build(m, t.seed) for m, t in splits]
    if any(t.head_init == "probe" for _, t in splits):  # the rows' data is one: one probe for all
        head = cached_probe_head(data, backbone=backbone, device=device)
        for member, (_, train) in zip(members, splits, strict=True):
            if train.head_init == "probe":
                head.copy_to(member.classifier)  # FusedLoRA / FusedRows copy it into its row
    methods = [m for m, _ in splits]
    if all(m.method == "lora" for m in methods):  # other linears: rows of a union template
        return fuse_lora(members, lambda: build(group_template(methods), first.seed)), members
    return FusedRows(members, template=build(group_template(methods), first.seed)), members


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=list)
