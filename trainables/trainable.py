"""The Ray Tune function trainable: pure in ``config``; data arrives through ``tune.with_parameters``.
A trial of a fused pool runs :mod:`trainables.relay` instead (it trains nothing itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from trainables.prepared import PreparedData
from trainables.recipe import run_trial


def tune_trial(config: dict[str, Any], *, data: PreparedData) -> None:
    """Run one trial under Tune: resume from Tune's checkpoint if any, report each evaluation."""

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(folder)) if folder else None
        tune.report(metrics, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_trial(config, data, report=report)
        return
    with checkpoint.as_directory() as folder:
        run_trial(config, data, report=report, resume_from=Path(folder))
