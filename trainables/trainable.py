"""The Ray Tune function trainable: pure in ``config``; data arrives through ``tune.with_parameters``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from trainables.prepared import PreparedData
from trainables.recipe import WEIGHTS, run_trial

POLL_S = 1.0  # how long one poll of a fused pool waits for a report


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


def tune_pooled_trial(config: dict[str, Any], *, pool: Any) -> None:
    """Run one trial in a fused pool (:mod:`trainables.fused_pool`, a Ray actor on the GPU): join
    it, relay each evaluation it reports to Tune (the last with the trained weights as the
    checkpoint), leave it however this ends (completed, stopped by the scheduler, failed)."""
    import ray

    from trainables.fused_pool import WEIGHTS_KEY

    token = ray.get(pool.join.remote(config))
    try:
        while True:
            for metrics in ray.get(pool.poll.remote(token, POLL_S)):
                weights = metrics.pop(WEIGHTS_KEY, None)
                if weights is None:
                    tune.report(metrics)
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / WEIGHTS).write_bytes(weights)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
                return
    finally:
        pool.leave.remote(token)
