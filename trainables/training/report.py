"""A trial's reports: the metrics dict each evaluation sends to Tune (and MLflow), the last with
the test split, shift sets and latency, under one set of keys whether the trial trained alone
(:func:`trainables.recipe.run_trial`), fused in-process (:func:`trainables.recipe.run_fused`) or
in a fused pool (:mod:`trainables.fused.pool`).

``best_dev_score`` follows the plan's best-score rule (:func:`.plan.improves`, in the metric's
``mode``); ``wall_s`` and ``time_to_best_s`` count from the reporter's ``started``: the trial's
start in this process (a resumed trial's best is the best since it resumed).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from trainables.data.encoded import Encoded
from trainables.flops import trial_mfu
from trainables.inference import LATENCY_PASSES, LATENCY_WARMUP, evaluate, measure_latency
from trainables.prepared import PreparedData
from trainables.train_config import TrainConfig
from trainables.training.plan import improves
from trainables.training.progress import EvalReport, FitResult

Scores = dict[str, dict[str, float]]  # split name -> its metrics ("score" the primary one)


def param_counts(model: Any) -> dict[str, int]:
    """The trial's parameter counts, which every report carries."""
    return {"trainable_params": model.trainable_params(), "added_params": model.added_params()}


class TrialReporter:
    """Builds one trial's reports from its evaluations (:class:`EvalReport`): ``model`` is the
    trial's (a ``PeftClassifier``), trained with ``config`` for a ``mode`` metric on ``device``."""

    def __init__(
        self,
        model: Any,
        config: TrainConfig,
        *,
        mode: str,
        device: str,
        started: float | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.mode = mode
        self.device = device
        self.started = time.perf_counter() if started is None else started
        self.counts = param_counts(model)
        self.best: float | None = None
        self.time_to_best_s = 0.0

    def evaluation(self, ev: EvalReport, **extra: Any) -> dict[str, Any]:
        """The report of ``ev`` (status ``running``), with ``extra`` keys (the caller's own)."""
        metrics = {
            **self.counts,
            "evaluation": ev.evaluation,
            "fidelity": ev.evaluation / self.config.evals,
            "step": ev.step,
            "epoch": ev.epoch,
            "train_loss": ev.train_loss,
            "dev_loss": ev.dev_loss,
            "dev_score": ev.dev_score,
            **{f"dev_{k}": v for k, v in ev.dev_metrics.items() if k != "score"},
            "train_samples_per_s": ev.train_samples_per_s,
            "train_s": ev.train_s,  # of wall_s, training (graph capture included), evaluations not
            "mfu": trial_mfu(self.model, ev, self.device),  # None on CPU: no known peak
            "wall_s": time.perf_counter() - self.started,
            "status": "running",
            **extra,
        }
        if improves(self.best, ev.dev_score, mode=self.mode):
            self.best, self.time_to_best_s = ev.dev_score, metrics["wall_s"]
        metrics.update(best_dev_score=self.best, time_to_best_s=self.time_to_best_s)
        return metrics

    def last(self, ev: EvalReport) -> bool:
        """Whether ``ev`` is the trial's last evaluation."""
        return self.is_last(ev.evaluation)

    def is_last(self, evaluation: int) -> bool:
        """Whether evaluation number ``evaluation`` (1-based) is the trial's last."""
        return evaluation == self.config.evals

    def finish(
        self, metrics: dict[str, Any], data: PreparedData, scores: Scores | None = None
    ) -> dict[str, Any]:
        """``metrics`` of the last evaluation completed: :func:`final_metrics` (``scores``: see
        there), the seconds they took (``final_s``), status ``completed``."""
        started = time.perf_counter()
        metrics.update(final_metrics(self.model, data, self.config, self.device, scores=scores))
        metrics["final_s"] = time.perf_counter() - started  # test split (if not scored), latency
        metrics["status"] = "completed"
        return metrics


def result_report(
    model: Any, result: FitResult, data: PreparedData, config: TrainConfig, device: str
) -> dict[str, Any]:
    """A trial's final metrics from how its run ended (:class:`FitResult`), as its last
    evaluation report carries them."""
    return {
        **param_counts(model),
        "dev_score": result.dev_metrics["score"],
        "best_dev_score": result.best_dev_score,
        "train_samples_per_s": result.train_samples_per_s,
        "wall_s": result.wall_s,
        "status": result.status,
        **final_metrics(model, data, config, device),
    }


def final_metrics(
    model: Any,
    data: PreparedData,
    config: TrainConfig,
    device: str,
    *,
    scores: Scores | None = None,
) -> dict[str, float]:
    """Test-split scores (the reported split), extra evaluation sets and inference latency;
    ``trained_at``, the wall clock (``time.time()``) as training and its last dev evaluation
    ended, dates the trial: its training began at ``trained_at - wall_s`` (tuner.bench).
    ``scores``: the metrics of the splits (``"test"``, each extra set's name) the caller has
    scored already (a fused pool scores its finishing rows at once, as their dev evaluations)."""
    kwargs = {"task_kind": data.task_kind, "metric": data.metric,
              "batch_size": config.eval_batch_size, "device": device}  # fmt: skip
    out: dict[str, float] = {"trained_at": time.time()}
    done = scores or {}
    got = {name: done[name] if name in done else evaluate(model, split, **kwargs)[1]
           for name, split in final_splits(data).items()}  # fmt: skip
    out["test_score"] = got["test"]["score"]
    out.update({f"test_{k}": v for k, v in got["test"].items() if k != "score"})
    for name in data.extra_tests:
        out[f"shift_{name}_score"] = got[name]["score"]
    out.update(data.baselines())  # did it learn? the majority class's score beside the trial's
    out.update(model.method_metrics())  # AdaLoRA's final ranks, fusion entropy, grown ranks
    out.update(model.memory_metrics())  # base_mib, adapter_mib: the QLoRA memory table (#24)
    out.update(latencies(model, data.dev, device))
    if torch.cuda.is_available() and device.startswith("cuda"):
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def final_splits(data: PreparedData) -> dict[str, Encoded]:
    """The splits a trial's final metrics score, by name: ``"test"``, then the extra sets."""
    return {"test": data.test, **data.extra_tests}


# what :func:`latencies` measured in this process, by architecture, device and examples
_LATENCIES: dict[tuple[Any, ...], dict[str, float]] = {}


def latencies(model: Any, data: Encoded, device: str) -> dict[str, float]:
    """``latency_ms`` of ``model`` on ``data``'s first examples, and ``latency_merged_ms`` for
    LoRA (merged: the same function, no added latency). Measured once per process for each
    architecture (method configuration and parameter shapes), device and examples' lengths: a
    trial's weights do not change its time, and a fused pool measures a finishing trial while
    every other trial waits (55 passes a measurement, twice for LoRA: 0.3-1 s each at the 5-19 ms
    of e4_budget's trials on an H100, of final metrics that took 1.2-3.8 s)."""
    shapes = tuple((n, tuple(p.shape), p.dtype) for n, p in model.named_parameters())
    used = data.lengths[: LATENCY_PASSES + LATENCY_WARMUP].tobytes()
    key = (model.config, shapes, str(device), used)
    if key not in _LATENCIES:
        out = {"latency_ms": measure_latency(model, data, device=device)}
        if model.config.method == "lora":
            merged = copy.deepcopy(model)
            merged.merge()
            out["latency_merged_ms"] = measure_latency(merged, data, device=device)
        _LATENCIES[key] = out
    return dict(_LATENCIES[key])


__all__ = [
    "Scores",
    "TrialReporter",
    "final_metrics",
    "final_splits",
    "latencies",
    "param_counts",
    "result_report",
]
