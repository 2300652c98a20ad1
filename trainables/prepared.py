"""Data prepared once per study on the driver and shared with every trial (Ray object store)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainables.data.encoded import Encoded
from trainables.data.splits import stratified_order
from trainables.metrics import majority_score

PROBE_KEYS = ("dev_probe_score", "test_probe_score")  # trained on the train rows: size-bound


@dataclass(frozen=True)
class PreparedData:
    """Tokenised splits of one task for one backbone and max length.

    ``test`` is the task's reported split (never used for selection; empty in a source adapter's
    data, which is scored on dev only: ``tuner.prepare.prepare(test=False)``); ``extra_tests`` are
    further evaluation sets scored at the end (e.g. domain-shift sets in E3), keyed by name.
    ``source_adapters`` maps a fusion source task to its trained adapter folder, per bottleneck.
    """

    task: str
    task_kind: str  # "classification" | "regression"
    metric: str
    num_labels: int
    train: Encoded
    dev: Encoded
    test: Encoded
    extra_tests: dict[str, Encoded] = field(default_factory=dict)
    source_adapters: dict[int, dict[str, Path]] = field(default_factory=dict)
    # scores no trial may sit at or below: the head-only probe's (trainables.probe), when computed,
    # and for sentence-pair regression the frozen embeddings' zero-shot cosine (trainables.zero_shot)
    reference: dict[str, float] = field(default_factory=dict)
    # the probe trained on the k-row subsets the trials train on (few-shot arms): train_samples ->
    # its scores; a subset without one records no probe (a probe on more rows is not its baseline)
    probes_at: dict[int, dict[str, float]] = field(default_factory=dict)

    def baselines(self) -> dict[str, float]:
        """What a model that learned nothing scores: always the train split's majority class, on
        dev and test (``dev_majority_score``, ``test_majority_score``), and the head-only probe's
        and zero-shot cosine's scores where the study computed them. Every trial records them."""
        majority = {f"{name}_majority_score": majority_score(self.metric, self.train.labels,
                                                             split.labels)
                    for name, split in (("dev", self.dev), ("test", self.test))}  # fmt: skip
        return {**majority, **self.reference}

    def adapters_for(self, bottleneck: int) -> dict[str, Path] | None:
        return self.source_adapters.get(bottleneck)


def subsample(data: PreparedData, k: int | None, *, seed: int) -> PreparedData:
    """Keep ``k`` training examples: stratified, seeded and nested (128 inside 512 for a seed).
    The probe scores become those of the probe trained on ``k`` rows, or none."""
    if k is None or k >= len(data.train):
        return data
    reference = {key: v for key, v in data.reference.items() if key not in PROBE_KEYS}
    return dataclasses.replace(data, train=data.train.select(train_rows(data, k, seed=seed)),
                               reference={**reference, **data.probes_at.get(int(k), {})})  # fmt: skip


def train_rows(data: PreparedData, k: int | None, *, seed: int) -> np.ndarray:
    """The rows of ``data.train`` that :func:`subsample` keeps, in order (all for ``k=None``)."""
    if k is None or k >= len(data.train):
        return np.arange(len(data.train))
    stratify = data.task_kind == "classification"
    return np.sort(stratified_order(data.train.labels, seed=seed, stratify=stratify)[: int(k)])
