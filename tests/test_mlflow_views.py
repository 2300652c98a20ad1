"""How a study reads in MLflow, on a real sqlite store without Ray: the experiment's kind,
description and trials view; the parent's setup, dataset inputs and outcome; the trials' params,
names and metrics as the driver's logger writes them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from trainables.data.encoded import Encoded
from trainables.prepared import PreparedData
from tuner.experiments import get_experiment
from tuner.launch import parent_run
from tuner.mlflow_views import (
    KIND_TAG,
    MODEL_TRAINING,
    NOTE_TAG,
    VIEW_TAG_PREFIX,
    describe_study,
    outcome,
    record_outcome,
    setup_params,
    trials_link,
    trials_view,
    trials_view_key,
)
from tuner.tracking import STOPPED_SUFFIX, MlflowLogger, connect, ensure_experiment, numeric_metrics

PRESET = "smoke"


def encoded(n: int, seed: int) -> Encoded:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 9, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, 100, size=int(offsets[-1])).astype(np.int32)
    return Encoded(ids, offsets, rng.integers(0, 3, size=n).astype(np.int64))


def prepared() -> PreparedData:
    return PreparedData(task="tweet_eval/sentiment", task_kind="classification", metric="f1",
                        num_labels=3, train=encoded(40, 0), dev=encoded(12, 1),
                        test=encoded(15, 2))  # fmt: skip


def config(method: str) -> dict:
    return {"method": method, "rank": 4 if method != "fusion" else None, "fusion": None,
            "sources": None, "lr": 1e-3, "trainable_params": 4000, "task": "tweet_eval/sentiment",
            "evals": 2}  # fmt: skip


# trial id -> method, dev score per evaluation
TRIALS = {"t1": ("lora", [0.5, 0.6]), "t2": ("lora_fusion", [0.55, 0.7]), "t3": ("fusion", [0.4])}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    exp = get_experiment("e4_budget").with_preset(PRESET)
    client = connect(uri)
    experiment_id = ensure_experiment(client, exp.name)
    parent = parent_run(client, experiment_id, exp, PRESET, None, resume=False)
    data = prepared()
    describe_study(client, experiment_id, parent, exp, PRESET, data=data)
    describe_study(client, experiment_id, parent, exp, PRESET, data=data)  # --resume: no change
    logger = MlflowLogger(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent,
                          tags={"phase": "search"})  # fmt: skip
    logger.setup()
    rows = []
    for trial_id, (method, curve) in TRIALS.items():
        trial = SimpleNamespace(trial_id=trial_id, config=config(method), last_result=None,
                                checkpoint=None)  # fmt: skip
        logger.on_trial_start(0, [], trial)
        for i, dev in enumerate(curve, start=1):
            trial.last_result = {"evaluation": i, "dev_score": dev, "step": 8 * i,
                                 "fidelity": i / 2, "test_score": dev - 0.05}  # fmt: skip
            logger.on_trial_result(0, [], trial, trial.last_result)
        logger.on_trial_complete(0, [], trial)
        status = "completed" if len(curve) == 2 else "stopped"
        rows.append({"trial_id": trial_id, "status": status, "config": trial.config,
                     "dev_score": curve[-1], "test_score": curve[-1] - 0.05})  # fmt: skip
    completed = sorted((r for r in rows if r["status"] == "completed"),
                       key=lambda r: -r["dev_score"])  # fmt: skip
    summary = {"trials": rows, "best": completed, "status_counts": {"completed": 2, "stopped": 1}}
    record_outcome(client, experiment_id, parent, exp, PRESET, summary, train_size=40)
    return SimpleNamespace(client=client, experiment_id=experiment_id, parent=parent, exp=exp)


def children(study) -> dict[str, object]:
    runs = study.client.search_runs(
        [study.experiment_id], f"tags.`mlflow.parentRunId` = '{study.parent}'"
    )
    return {r.data.tags["trial_id"]: r for r in runs}


def test_the_experiment_is_model_training_with_a_description_and_a_trials_view(study):
    tags = study.client.get_experiment(study.experiment_id).tags
    assert tags[KIND_TAG] == MODEL_TRAINING == "custom_model_development"
    note = tags[NOTE_TAG]
    assert study.exp.summary in note and "tweet_eval/sentiment" in note and "±5%" in note
    assert trials_link(study.experiment_id, study.parent) in note
    view = json.loads(tags[VIEW_TAG_PREFIX + trials_view_key(study.parent)])
    assert view == trials_view(study.exp, study.parent)
    # the view's filter is a search MLflow accepts, and it finds exactly the trials
    found = study.client.search_runs([study.experiment_id], view["searchFilter"])
    assert sorted(r.data.tags["trial_id"] for r in found) == sorted(TRIALS)
    assert view["orderByKey"] == "metrics.`dev_score`" and view["orderByAsc"] is False
    assert {"params.`method`", "metrics.`dev_score`", "tags.`status`"} <= set(
        view["selectedColumns"]
    )


def test_the_parent_holds_the_setup_inputs_and_outcome(study):
    run = study.client.get_run(study.parent)
    params = run.data.params
    assert params == setup_params(study.exp, PRESET, train_size=40)
    assert params["task"] == "tweet_eval/sentiment" and params["scheduler"] == "asha"
    assert params["budget_params"] == str(study.exp.search.budget_params)
    assert params["tolerance"] == "0.05" and params["train_size"] == "40"
    assert "None" not in params.values()
    metrics = run.data.metrics
    assert metrics["best_dev_score"] == pytest.approx(0.7)
    assert metrics["best_test_score"] == pytest.approx(0.65)
    assert (metrics["trials_completed"], metrics["trials_stopped"], metrics["trials_failed"]) == (
        2,
        1,
        0,
    )
    note = run.data.tags[NOTE_TAG]
    assert "**Best on dev**: 0.7000 (its test: 0.6500)" in note and "method=lora_fusion" in note
    assert "2 completed, 1 stopped, 0 failed" in note
    best_run = children(study)["t2"]
    assert f"runs/{best_run.info.run_id}" in note


def test_the_splits_are_dataset_inputs_with_digest_and_size_logged_once(study):
    inputs = study.client.get_run(study.parent).inputs.dataset_inputs
    by_context = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs
    }
    assert sorted(by_context) == ["dev", "test", "train"]  # once, though described twice
    assert json.loads(by_context["train"].profile)["num_rows"] == 40
    assert json.loads(by_context["test"].profile)["num_rows"] == 15
    assert len({d.digest for d in by_context.values()}) == 3 and by_context["dev"].digest


def test_trials_have_no_none_params_and_stopped_ones_say_so(study):
    runs = children(study)
    for trial_id, run in runs.items():
        assert "None" not in run.data.params.values(), trial_id
        assert run.data.tags["role"] == "trial" and run.info.status == "FINISHED"
    assert "rank" not in runs["t3"].data.params and runs["t1"].data.params["rank"] == "4"
    assert runs["t3"].info.run_name.endswith(STOPPED_SUFFIX)
    assert runs["t3"].data.tags["status"] == "stopped"
    assert not runs["t1"].info.run_name.endswith(STOPPED_SUFFIX)


def test_optimizer_steps_do_not_clash_with_mlflows_step_axis(study):
    run = children(study)["t1"]
    assert "step" not in run.data.metrics
    history = study.client.get_metric_history(run.info.run_id, "optimizer_step")
    assert [(m.step, m.value) for m in history] == [(1, 8.0), (2, 16.0)]
    assert numeric_metrics({"step": 3, "dev_score": 0.5}) == {"optimizer_step": 3.0,
                                                              "dev_score": 0.5}  # fmt: skip


def test_outcome_without_a_completed_trial():
    exp = get_experiment("e4_budget").with_preset(PRESET)
    metrics, best = outcome({"best": [], "status_counts": {"failed": 2, "oom": 1}}, exp)
    assert best is None and "best_dev_score" not in metrics
    assert metrics["trials_failed"] == 2 and metrics["trials_oom"] == 1
    assert metrics["trials_completed"] == 0 and metrics["trials_total"] == 3


def test_the_trials_link_is_a_route_inside_the_ui():
    """A route after the UI's address: it works behind any server, port or proxy."""
    link = trials_link("7", "abc")
    assert link == "#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=trials-abc"
