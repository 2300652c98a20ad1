"""Data prepared once per study on the driver and shared with every trial (Ray object store)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainables.data.encoded import Encoded


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

    def adapters_for(self, bottleneck: int) -> dict[str, Path] | None:
        return self.source_adapters.get(bottleneck)
