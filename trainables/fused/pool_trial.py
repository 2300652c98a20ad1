"""A trial in a fused pool (:mod:`trainables.fused.pool`): its model, built as
:func:`trainables.recipe.run_trial` builds it, its own plan, schedule and data order, and its
progress and reports (the training core's :class:`~trainables.training.progress.Progress` and
:class:`~trainables.training.report.TrialReporter`)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search_spaces.method_config import MethodConfig
from trainables.backbones import load_backbone
from trainables.methods import build_model
from trainables.model import PeftClassifier
from trainables.prepared import PreparedData, subsample
from trainables.probe import cached_probe_head
from trainables.train_config import TrainConfig
from trainables.training.batching import epoch_plan
from trainables.training.plan import FitPlan
from trainables.training.progress import Progress
from trainables.training.report import TrialReporter

Build = Callable[..., PeftClassifier]  # (method, train, backbone, *, sources) -> the model


def build_member(
    method: MethodConfig,
    train: TrainConfig,
    backbone: str,
    *,
    sources: dict[str, Path] | None = None,
) -> PeftClassifier:
    """A trial's model, initialised as :func:`trainables.recipe.run_trial` initialises it (on
    the host, from the seeded host generator; fusion methods over the ``sources`` adapters),
    leaving every generator as it found it."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(train.seed)
        return build_model(method, load_backbone(backbone), source_adapters=sources)


def start_head(
    model: PeftClassifier,
    train: TrainConfig,
    data: PreparedData,
    *,
    train_samples: int | None,
    backbone: str,
    device: str,
) -> None:
    """The built ``model``'s head as its ``head_init`` says: for ``probe``, the probe of the
    trial's own rows of ``data`` (``train_samples`` of them, drawn with its seed) on the unmodified
    backbone (cached: one fit per rows), as :func:`trainables.recipe.run_trial` starts it; for
    ``random``, as built."""
    if train.head_init == "probe":
        rows = subsample(data, train_samples, seed=train.seed)
        cached_probe_head(rows, backbone=backbone, device=device).copy_to(model.classifier)


@dataclass(eq=False)
class PoolTrial:
    """One trial in the pool: its model (on the host: its row lives in the fused ``theta``), its
    own plan, schedule and data order, its progress and its reports not yet polled."""

    token: int
    config: dict[str, Any]
    train: TrainConfig
    model: PeftClassifier
    plan: FitPlan
    factor: Callable[[int], float]  # its learning-rate schedule: warm-up, then linear decay
    rows: np.ndarray  # its training rows of the pool's data (its subset, or all)
    signature: tuple[Any, ...] = ()  # its row signature: which fused group it trains in
    row: int = -1  # its row of its group's fused model, once admitted
    progress: Progress = field(default_factory=Progress)
    reporter: TrialReporter | None = None  # from its admission on
    batches: list[np.ndarray] = field(default_factory=list)
    next_batch: int = 0
    loss_steps: int = 0  # steps since its last evaluation
    started: float = 0.0
    reports: list[dict[str, Any]] = field(default_factory=list)
    polled: float = field(default_factory=time.monotonic)
    joined: float = field(default_factory=time.monotonic)
    done: bool = False

    def next_rows(self, data: PreparedData) -> np.ndarray:
        """Its next batch (rows of the pool's training data), a new epoch's plan as one ends."""
        if self.next_batch == len(self.batches):
            if self.batches:
                self.progress.epoch += 1
            self.batches = epoch_plan(
                data.train.lengths[self.rows], batch_size=self.train.batch_size,
                seed=self.train.seed, epoch=self.progress.epoch,
                length_grouping=self.train.length_grouping,
            )  # fmt: skip
            self.next_batch = 0
        batch = self.rows[self.batches[self.next_batch]]
        self.next_batch += 1
        return batch


def method_weights(model: PeftClassifier) -> bytes:
    """The trained method weights as :meth:`PeftClassifier.save_method_weights` writes them."""
    with tempfile.TemporaryDirectory() as tmp:
        return model.save_method_weights(Path(tmp) / "weights.safetensors").read_bytes()


__all__ = ["Build", "PoolTrial", "build_member", "method_weights", "start_head"]
