"""After ``--resume`` the stores agree with the trials Tune restored (``tuner.reconcile``), checked
without Ray: a lost trial's MLflow child is closed as KILLED, its Optuna trial told FAIL, a grid's
arm of a lost trial still runs, and a driver that raises leaves no RUNNING parent run.

The real thing (a driver killed with SIGKILL, then ``--resume``) is tests/test_reliability_resume.py.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from analysis.markdown import completeness as completeness_md
from analysis.trials import load_tune_folder
from tuner.reconcile import (
    KILLED,
    KILLED_REASON,
    closes_parent,
    parent_opened,
    reconcile_runs,
    saved_trials,
    unfinished_trials,
)
from tuner.searcher import FidelityOptunaSearch
from tuner.space import GridSpace
from tuner.tracking import MlflowLogger, connect, ensure_experiment


def space(trial):
    trial.suggest_float("x", 0.0, 1.0)
    return {"budget": 1}


def write_state(folder: Path, trials: dict[str, tuple[str, dict]], *, stamp: str = "1") -> None:
    """A Tune experiment state file as Ray 2.60 writes it (only what is read here)."""
    data = [[json.dumps({"trial_id": tid, "status": status}),
             json.dumps({"last_result": result})] for tid, (status, result) in trials.items()]  # fmt: skip
    (folder / f"experiment_state-2026-01-0{stamp}.json").write_text(
        json.dumps({"trial_data": data})
    )


def saved_searcher(folder: Path) -> FidelityOptunaSearch:
    """A searcher that suggested a, b, c and saw a finish, saved to ``folder`` as Tune saves it."""
    searcher = FidelityOptunaSearch(space=space, metric="dev_score", mode="max", seed=0)
    for trial_id in ("a", "b", "c"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", {"dev_score": 0.5, "fidelity": 1.0})
    searcher.save_to_dir(str(folder), session_str="2026-01-01")
    return searcher


def states(searcher) -> dict[str, str]:
    by_number = {t.number: t.state.name for t in searcher._ot_study.trials}
    return {tid: by_number[t.number] for tid, t in searcher._ot_trials.items()}


def test_a_trial_tune_lost_is_told_fail_and_one_it_resumes_stays_running(tmp_path):
    saved_searcher(tmp_path)
    write_state(tmp_path, {"a": ("TERMINATED", {}), "c": ("RUNNING", {})})  # b started after
    restored = FidelityOptunaSearch()
    restored.restore_from_dir(str(tmp_path))
    assert states(restored) == {"a": "COMPLETE", "b": "FAIL", "c": "RUNNING"}
    lost = restored._ot_study.trials[restored._ot_trials["b"].number]
    assert lost.user_attrs["killed_reason"] == KILLED_REASON
    restored.on_trial_complete("b", {"dev_score": 0.9, "fidelity": 1.0})  # never told twice
    assert states(restored)["b"] == "FAIL"


def test_a_trial_tune_saved_as_finished_is_told_its_result(tmp_path):
    saved_searcher(tmp_path)  # the searcher's state is older than Tune's: c ended since
    write_state(tmp_path, {"a": ("TERMINATED", {}), "b": ("RUNNING", {}),
                           "c": ("TERMINATED", {"dev_score": 0.7, "fidelity": 1.0})})  # fmt: skip
    restored = FidelityOptunaSearch()
    restored.restore_from_dir(str(tmp_path))
    assert states(restored) == {"a": "COMPLETE", "b": "RUNNING", "c": "COMPLETE"}


def test_without_a_saved_tune_state_nothing_changes(tmp_path):
    saved_searcher(tmp_path)
    restored = FidelityOptunaSearch()
    restored.restore_from_dir(str(tmp_path))
    assert states(restored) == {"a": "COMPLETE", "b": "RUNNING", "c": "RUNNING"}
    assert saved_trials(tmp_path) is None


def test_the_newest_saved_state_is_the_one_read(tmp_path):
    write_state(tmp_path, {"a": ("RUNNING", {})}, stamp="1")
    write_state(tmp_path, {"a": ("TERMINATED", {"x": 1}), "b": ("PENDING", {})}, stamp="2")
    saved = saved_trials(tmp_path)
    assert saved is not None
    assert {k: v.status for k, v in saved.items()} == {"a": "TERMINATED", "b": "PENDING"}


def test_the_searcher_limits_trials_at_once_and_a_lost_trial_frees_its_slot(tmp_path):
    searcher = saved_searcher(tmp_path)  # b and c live
    assert searcher.set_max_concurrency(2)  # Ray's ConcurrencyLimiter then leaves it to us
    assert searcher.suggest("d") is None
    searcher.on_trial_complete("b", {"dev_score": 0.6, "fidelity": 1.0})
    assert searcher.suggest("d") is not None and searcher.suggest("e") is None
    write_state(tmp_path, {"a": ("TERMINATED", {}), "c": ("RUNNING", {})})  # b, d: lost
    searcher.save_to_dir(str(tmp_path), session_str="2026-01-01")
    restored = FidelityOptunaSearch()
    restored.restore_from_dir(str(tmp_path))
    restored.set_max_concurrency(2)  # Tune sets it again on every run
    assert restored.suggest("e") is not None  # d's slot is free again


def test_a_grid_runs_the_arm_of_a_lost_trial_on_the_next_trial():
    grid = GridSpace(({"arm": 0}, {"arm": 1}, {"arm": 2}))
    study = optuna.create_study()
    first, lost = study.ask(), study.ask()
    assert [grid(first)["arm"], grid(lost)["arm"]] == [0, 1]
    lost.set_user_attr("killed_reason", KILLED_REASON)
    study.tell(lost, None, state=TrialState.FAIL)
    assert [grid(study.ask())["arm"] for _ in range(3)] == [1, 2, 0]


def test_the_searcher_state_pickles_after_reconciling(tmp_path):
    saved_searcher(tmp_path)
    write_state(tmp_path, {"a": ("TERMINATED", {})})
    restored = FidelityOptunaSearch()
    restored.restore_from_dir(str(tmp_path))
    again = pickle.loads(pickle.dumps(restored.__dict__))
    assert {t.state for t in again["_ot_study"].trials} == {TrialState.COMPLETE, TrialState.FAIL}


# --- MLflow ------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = connect(uri)
    experiment_id = ensure_experiment(client, "resume")
    parent_id = client.create_run(experiment_id, tags={"role": "study"}).info.run_id
    return SimpleNamespace(uri=uri, client=client, experiment_id=experiment_id, parent=parent_id)


def fake_trial(trial_id: str, status: str = "RUNNING", result: dict | None = None):
    return SimpleNamespace(trial_id=trial_id, status=status, config={"method": "lora"},
                           last_result=result, checkpoint=None)  # fmt: skip


def logger_for(store, phase: str = "search") -> MlflowLogger:
    logger = MlflowLogger(tracking_uri=store.uri, experiment_id=store.experiment_id,
                          parent_run_id=store.parent, tags={"phase": phase})  # fmt: skip
    logger.setup()
    return logger


def child(store, trial_id: str):
    query = f"tags.`mlflow.parentRunId` = '{store.parent}' and tags.trial_id = '{trial_id}'"
    (run,) = store.client.search_runs([store.experiment_id], query)
    return run


def test_the_child_of_a_lost_trial_is_closed_as_killed_and_the_others_are_kept(store):
    first = logger_for(store)
    done = {"fidelity": 1.0, "evaluation": 2}
    for trial_id in ("kept", "lost", "ended", "ended_lost"):
        first.on_trial_start(0, [], fake_trial(trial_id))
    first.on_trial_complete(0, [], fake_trial("ended", result=done))
    first.on_trial_complete(0, [], fake_trial("ended_lost", result=done))
    logger_for(store, phase="seeds").on_trial_start(0, [], fake_trial("other_phase"))

    resumed = logger_for(store)  # Tune restored "kept" (running) and "ended" (finished)
    restored = [fake_trial("kept", "PENDING"), fake_trial("ended", "TERMINATED", done)]
    resumed.on_step_begin(0, restored)
    resumed.on_step_begin(1, [])  # once per driver: later steps change nothing

    lost = child(store, "lost")
    assert lost.info.status == "KILLED" and lost.data.tags["status"] == KILLED
    assert lost.data.tags["killed_reason"] == KILLED_REASON
    ended_lost = child(store, "ended_lost")
    assert ended_lost.info.status == "KILLED"
    assert ended_lost.data.tags["killed_reason"].startswith(KILLED_REASON + " (it had ended")
    assert child(store, "kept").info.status == "RUNNING"  # Tune resumes it under its own id
    assert child(store, "ended").info.status == "FINISHED"
    assert child(store, "other_phase").info.status == "RUNNING"  # another phase's trials


def test_a_trial_tune_saved_as_finished_but_still_running_in_mlflow_is_finished(store):
    logger_for(store).on_trial_start(0, [], fake_trial("t"))  # killed before on_trial_complete
    restored = [fake_trial("t", "TERMINATED", {"fidelity": 0.5, "evaluation": 1})]
    lost = reconcile_runs(logger_for(store), restored)
    assert lost == []
    run = child(store, "t")
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "stopped"


def test_a_driver_that_raises_leaves_its_parent_failed(store):
    @closes_parent
    def driver(run_id: str) -> None:
        parent_opened(store.client, run_id)
        raise RuntimeError("no scored trial")

    with pytest.raises(RuntimeError):
        driver(store.parent)
    assert store.client.get_run(store.parent).info.status == "FAILED"
    parent_opened(store.client, "not-recorded-outside-a-driver")  # a no-op, no error


def test_the_report_counts_a_killed_trial_once(tmp_path):
    folder = tmp_path / "e4_budget-smoke"
    for trial_id in ("aaaa0001", "aaaa0002"):
        (folder / f"trial_{trial_id}").mkdir(parents=True)
        (folder / f"trial_{trial_id}" / "params.json").write_text(json.dumps({"method": "lora"}))
    write_state(folder, {"aaaa0001": ("PENDING", {})})  # aaaa0002: lost with the driver
    study = load_tune_folder(folder)
    assert dict(zip(study.trials["trial_id"], study.trials["status"], strict=True)) == {
        "aaaa0001": "running", "aaaa0002": "killed"}  # fmt: skip
    text = completeness_md(study.completeness)
    assert "1 killed trial(s) (lost with a killed driver" in text


class _Ended:
    """What a ResultGrid says after fit() returns: every trial it knows ended (terminated)."""

    num_terminated, num_errors = 4, 0

    def __len__(self) -> int:
        return 4


def test_unfinished_trials_are_read_from_the_saved_state_where_fit_calls_them_stopped(tmp_path):
    # after a SIGINT, Tune's saved state still holds the interrupted trial RUNNING, and 2 of the
    # 6 trials asked were never started (the real SIGINT: tests/test_reliability_interrupt.py)
    write_state(tmp_path, {"a": ("TERMINATED", {}), "b": ("TERMINATED", {}),
                           "c": ("ERROR", {}), "d": ("RUNNING", {})})  # fmt: skip
    assert unfinished_trials(_Ended(), 6, str(tmp_path)) == 1 + 2
    write_state(tmp_path, {t: ("TERMINATED", {}) for t in "abcdef"}, stamp="2")  # the end
    assert unfinished_trials(_Ended(), 6, str(tmp_path)) == 0
    # no saved state to read (remote storage): the grid's statuses and its count
    assert unfinished_trials(_Ended(), 6, str(tmp_path / "elsewhere")) == 2
