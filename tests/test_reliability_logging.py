"""Many trials logging to one MLflow store lose nothing and duplicate nothing.

The driver's logger receives the results of 16 trials interleaved, with restarts that report an
evaluation again and a resumed driver that finds its children again; then 16 processes (16
studies, one trial each) write to one sqlite store at the same moment, creating the experiment
together. Every metric point is counted.
"""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from tuner.tracking import MlflowLogger, connect, ensure_experiment

TRIALS = 16
EVALS = 5
# logged per evaluation; Tune's "step" (optimiser steps) is logged as "optimizer_step"
METRICS = ("dev_score", "train_loss", "fidelity", "optimizer_step")


def fake_trial(index: int) -> SimpleNamespace:
    """What the logger reads of a Tune trial."""
    config = {"method": "lora", "rank": index + 1, "lr": 1e-3}
    return SimpleNamespace(trial_id=f"trial{index:02d}", config=config, last_result=None,
                           checkpoint=None)  # fmt: skip


def result(evaluation: int) -> dict:
    return {"evaluation": evaluation, "dev_score": evaluation / 10, "train_loss": 1 / evaluation,
            "fidelity": evaluation / EVALS, "step": 8 * evaluation, "training_iteration": evaluation,
            "time_total_s": 1.0, "status": "completed" if evaluation == EVALS else "running"}  # fmt: skip


def report(logger: MlflowLogger, trial: SimpleNamespace, evaluation: int) -> None:
    trial.last_result = result(evaluation)
    logger.on_trial_result(0, [], trial, trial.last_result)


def metric_points(client, run_id: str) -> list[tuple[str, int]]:
    return [(key, m.step) for key in METRICS for m in client.get_metric_history(run_id, key)]


def children(client, experiment_id: str, parent_id: str) -> list:
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_the_driver_logs_16_interleaved_trials_once_each(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = connect(uri)
    experiment_id = ensure_experiment(client, "interleaved")
    parent_id = client.create_run(experiment_id).info.run_id

    def logger() -> MlflowLogger:
        new = MlflowLogger(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent_id,
                           tags={"phase": "search"})  # fmt: skip
        new.setup()
        return new

    trials = [fake_trial(i) for i in range(TRIALS)]
    order = [(t, e) for t in trials for e in range(1, EVALS + 1)]
    random.Random(0).shuffle(order)
    order.sort(key=lambda pair: pair[1])  # interleaved across trials, in order within each
    first = logger()
    for trial in trials:
        first.on_trial_start(0, [], trial)
    half = len(order) // 2
    for trial, evaluation in order[:half]:
        report(first, trial, evaluation)
        if evaluation == 3:  # a restart from the checkpoint at 2 reports 3 again
            report(first, trial, evaluation)
    second = logger()  # the driver died and --resume started another one
    for trial, evaluation in order[half - TRIALS :]:  # the last results before it died, again
        report(second, trial, evaluation)
    for trial in trials:
        second.on_trial_complete(0, [], trial)

    runs = children(client, experiment_id, parent_id)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials)
    for run in runs:
        points = metric_points(client, run.info.run_id)
        assert sorted(points) == sorted((k, e) for k in METRICS for e in range(1, EVALS + 1))
        assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
        assert "step" not in run.data.metrics, "MLflow's own step axis is the evaluation"
    assert sum(len(metric_points(client, r.info.run_id)) for r in runs) == (
        TRIALS * EVALS * len(METRICS)
    )


def _one_study(uri: str, index: int, barrier) -> None:
    """A driver of its own: creates the experiment if needed, its parent run, one trial."""
    barrier.wait()
    client = connect(uri)
    experiment_id = ensure_experiment(client, "concurrent")
    parent_id = client.create_run(experiment_id, tags={"role": "study"}).info.run_id
    logger = MlflowLogger(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent_id,
                          tags={"study": str(index)})  # fmt: skip
    logger.setup()
    trial = fake_trial(index)
    logger.on_trial_start(0, [], trial)
    for evaluation in range(1, EVALS + 1):
        report(logger, trial, evaluation)
    logger.on_trial_complete(0, [], trial)


@pytest.mark.slow
def test_16_drivers_write_one_sqlite_store_at_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # forkserver: children start from a clean process that never opened the store
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tuner.tracking"])
    barrier = context.Barrier(TRIALS)
    procs = [context.Process(target=_one_study, args=(uri, i, barrier)) for i in range(TRIALS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * TRIALS

    client = connect(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "concurrent"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    trials = [r for r in runs if r.data.tags.get("trial_id")]
    assert len(parents) == TRIALS and len(trials) == TRIALS
    points = [p for r in trials for p in metric_points(client, r.info.run_id)]
    assert len(points) == TRIALS * EVALS * len(METRICS)
    assert all(r.data.tags["status"] == "completed" for r in trials)
