"""What a training run fixes before its first step: the step arithmetic, when it evaluates, its
learning-rate schedule, whether its steps replay from CUDA graphs, and the rule that says which
evaluation is the best (in the metric's direction: ``mode``, Ray's word).

A single model (:func:`trainables.training.loop.fit`), K fused trials
(:func:`trainables.fused.train.fit_fused`) and a trial in a fused pool
(:mod:`trainables.fused.pool`) each plan with :class:`FitPlan`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from search_spaces.errors import ConfigError, one_of
from trainables.inference import TASK_KINDS
from trainables.metrics import Metric, get_metric
from trainables.train_config import TrainConfig

MODES = ("max", "min")


def improves(best: float | None, score: float, *, mode: str) -> bool:
    """Whether ``score`` beats ``best`` (None: nothing yet) in the direction ``mode``."""
    if mode not in MODES:
        raise one_of("mode", mode, MODES)
    return best is None or (score > best if mode == "max" else score < best)


@dataclass(frozen=True)
class FitPlan:
    """What is fixed before the first step: the recipe, the task and the step arithmetic."""

    config: TrainConfig
    task_kind: str
    metric: Metric
    device: torch.device
    total_steps: int
    eval_steps: frozenset[int]
    steps_per_epoch: int

    @classmethod
    def of(
        cls, config: TrainConfig, num_train: int, *, task_kind: str, metric: str, device: Any
    ) -> FitPlan:
        spec = get_metric(metric)
        if task_kind not in TASK_KINDS:
            raise one_of("task_kind", task_kind, TASK_KINDS)
        if spec.regression != (task_kind == "regression"):
            raise ConfigError(f"metric={metric!r} does not fit task_kind={task_kind!r}")
        total = config.total_steps(num_train)
        return cls(
            config, task_kind, spec, resolve_device(device), total,
            frozenset(config.eval_steps(total)), config.steps_per_epoch(num_train),
        )  # fmt: skip

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def mode(self) -> str:
        return self.metric.mode

    def improves(self, best: float | None, score: float) -> bool:
        """Whether ``score`` beats ``best`` (None: nothing yet) in the metric's direction."""
        return improves(best, score, mode=self.metric.mode)

    def schedule(self, config: TrainConfig | None = None) -> Callable[[int], float]:
        """The learning-rate factor of each step of ``config`` (default: the plan's) over the
        plan's steps: :func:`lr_factor` with its warm-up."""
        config = config or self.config
        return lr_factor(config.warmup_steps(self.total_steps), self.total_steps)

    def start_device(self, *, fresh_peak: bool = True) -> None:
        """Ready the device: fp32 matmuls on tensor cores (TF32), peak memory counted afresh
        (``fresh_peak``; a process training more than one thing at a time keeps its count)."""
        if self.cuda:
            torch.set_float32_matmul_precision("high")
            if fresh_peak:
                torch.cuda.reset_peak_memory_stats(self.device)


def lr_factor(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to 1 over ``warmup`` steps, then linear decay; no step runs at lr 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def graphable(model: nn.Module, config: TrainConfig, plan: FitPlan) -> bool:
    """Whether training steps run from CUDA graphs: on CUDA, asked for, not compiled (compile
    brings its own), and the model has no per-step Python hooks (``model.graph_safe``)."""
    return (
        plan.cuda and config.cuda_graphs and not config.compile
        and bool(getattr(model, "graph_safe", True))
    )  # fmt: skip


def resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


__all__ = ["MODES", "FitPlan", "graphable", "improves", "lr_factor", "resolve_device"]
