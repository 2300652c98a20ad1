"""Data prepared once per study on the driver and shared with every trial (Ray object store)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainables.data.encoded import Encoded
from trainables.metrics import majority_score


@dataclass(frozen=True)
class PreparedData:
    """Tokenised splits of one task for one backbone and max length.

    ``test`` is the task's reported split (never used for selection); ``extra_tests`` are
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
