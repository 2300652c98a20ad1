"""A study that loses a trial's process and then its driver, and still ends whole.

One real study (e5_efficiency, smoke, 3 trials one at a time, 4 evaluations each) on a local Ray:

* ``fault=exit@2:trial=0``: trial 0 alone kills its own process at evaluation 2; Tune restarts it
  from its checkpoint (``FailureConfig(max_failures=2)``) and it finishes;
* once the driver has saved a finished trial and a running one with a checkpoint, the driver
  (``python -m tuner.run``) is killed with SIGKILL, and ``--resume`` finishes the study.

Then: finished trials were not run again, the running one went on from its checkpoint, Optuna's
study came back with its trials, and MLflow holds one parent and exactly one child per trial,
each with evaluations 1..4 once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cluster.local import end_processes, processes_using

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
EVALS = 4
ARMS = ("bitfit", "lora", "pfeiffer")  # e5_efficiency's smoke grid, in trial order
STUDY_ARGS = ["e5_efficiency", "--preset", "smoke", "--num-samples", "3", "--cpus-per-trial", "2",
              "--set", f"evals={EVALS}", "--set", "max_steps=400",
              "--set", "fault=exit@2:trial=0"]  # fmt: skip
KILL_TIMEOUT_S = 600  # waiting for a finished trial and a running one with a checkpoint
RESUME_TIMEOUT_S = 600


def saved_trials(study: Path) -> dict[str, dict]:
    """The trials as the driver last saved them (what ``--resume`` starts from)."""
    states = sorted(study.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"]
    except (OSError, ValueError, KeyError):  # being written
        return {}
    out = {}
    for trial_json, runtime_json in trial_data:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        last = runtime.get("last_result") or {}
        out[trial["trial_id"]] = {"status": trial["status"], "evaluation": last.get("evaluation"),
                                  "checkpoint": last.get("checkpoint_dir_name"),
                                  "num_failures": runtime.get("num_failures") or 0}  # fmt: skip
    return out


def ready_to_kill(trials: dict[str, dict]) -> bool:
    finished = any(t["status"] == "TERMINATED" for t in trials.values())
    running = any(t["status"] == "RUNNING" and t["checkpoint"] and (t["evaluation"] or 0) < EVALS
                  for t in trials.values())  # fmt: skip
    return finished and running


def result_rows(study: Path) -> dict[str, list[dict]]:
    rows = {}
    for folder in study.glob("trial_*"):
        lines = (
            (folder / "result.json").read_text().splitlines()
            if (folder / "result.json").is_file()
            else []
        )
        rows[folder.name.removeprefix("trial_")] = [json.loads(line) for line in lines]
    return rows


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("recovery")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rr-", dir="/tmp"))  # Ray's socket paths must stay short
    storage = tmp / "results"
    env = {**os.environ, "PEFT_TUNE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           "PEFT_TUNE_ADAPTERS": str(tmp / "adapters"), "PEFT_TUNE_CACHE_DIR": str(tmp / "tokens"),
           "RAY_TMPDIR": str(ray_tmp),
           # The driver saves its state at least every second (Tune's default: 10 s), so that the
           # kill below finds a running trial with a checkpoint within a few seconds.
           "TUNE_GLOBAL_CHECKPOINT_S": "1"}  # fmt: skip
    command = [sys.executable, "-m", "tuner.run", *STUDY_ARGS, "--storage", str(storage)]
    folder = storage / "e5_efficiency-smoke"
    try:
        with open(tmp / "first.log", "w") as log:
            driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
            deadline = time.monotonic() + KILL_TIMEOUT_S
            while not ready_to_kill(saved_trials(folder)):
                assert driver.poll() is None, "the study ended before it could be interrupted"
                assert time.monotonic() < deadline, "no running trial with a checkpoint in time"
                time.sleep(0.2)
            driver.send_signal(signal.SIGKILL)
            driver.wait()
        at_kill = saved_trials(folder)
        rows_at_kill = result_rows(folder)
        # Ray's processes share the driver's fate; none may live on and train in the background.
        deadline = time.monotonic() + 60
        while processes_using([ray_tmp]) and time.monotonic() < deadline:
            time.sleep(1)
        orphans = [p.pid for p in processes_using([ray_tmp])]
        resumed = subprocess.run([*command, "--resume"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=RESUME_TIMEOUT_S)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-4000:]
    finally:
        end_processes(processes_using([ray_tmp]), grace_s=5)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"folder": folder, "storage": storage, "at_kill": at_kill, "rows_at_kill": rows_at_kill,
            "orphans": orphans, "first_log": (tmp / "first.log").read_text(),
            "resume_log": resumed.stderr}  # fmt: skip


def test_the_killed_driver_left_no_ray_process_behind(study):
    assert study["orphans"] == []


def test_the_targeted_trial_alone_failed_once_and_went_on_from_its_checkpoint(study):
    summary = json.loads((study["folder"] / "summary.json").read_text())
    faulted = [t for t in summary["trials"] if t["config"].get("fault")]
    assert len(faulted) == 1 and faulted[0]["config"]["fault"] == "exit@2"
    assert faulted[0]["config"]["method"] == ARMS[0]  # trial 0 runs the first arm
    trial_id = faulted[0]["trial_id"]
    failures = {k: t["num_failures"] for k, t in saved_trials(study["folder"]).items()}
    assert failures.pop(trial_id) == 1
    assert set(failures.values()) == {0}
    rows = result_rows(study["folder"])[trial_id]
    assert [r["evaluation"] for r in rows] == list(range(1, EVALS + 1))
    restarted = next(r for r in rows if r["evaluation"] == 2)
    assert restarted["iterations_since_restore"] == 1  # restored from the checkpoint of eval 1


def test_finished_trials_were_not_run_again(study):
    finished = [k for k, t in study["at_kill"].items() if t["status"] == "TERMINATED"]
    assert finished
    rows = result_rows(study["folder"])
    for trial_id in finished:
        assert rows[trial_id] == study["rows_at_kill"][trial_id], trial_id


def test_the_running_trial_went_on_from_its_checkpoint(study):
    running = {k: t for k, t in study["at_kill"].items()
               if t["status"] == "RUNNING" and t["checkpoint"]}  # fmt: skip
    assert running
    rows = result_rows(study["folder"])
    for trial_id, saved in running.items():
        after = rows[trial_id][len(study["rows_at_kill"][trial_id]) :]
        assert after, trial_id
        # its first result after the resume follows the checkpoint the driver had saved
        assert after[0]["evaluation"] == saved["evaluation"] + 1, trial_id
        assert after[0]["iterations_since_restore"] == 1
        assert [r["evaluation"] for r in after] == list(range(saved["evaluation"] + 1, EVALS + 1))


def test_optuna_came_back_with_every_trial(study):
    from tuner.searcher import FidelityOptunaSearch

    searcher = FidelityOptunaSearch()
    searcher.restore_from_dir(str(study["folder"]))
    numbers = {trial_id: t.number for trial_id, t in searcher._ot_trials.items()}
    states = {t.number: t.state.name for t in searcher._ot_study.trials}
    assert sorted(numbers.values()) == [0, 1, 2]
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE"}
    summary = json.loads((study["folder"] / "summary.json").read_text())
    assert {t["trial_id"] for t in summary["trials"]} == set(numbers)
    for trial in summary["trials"]:  # a restarted numbering would have run an arm twice
        assert trial["config"]["method"] == ARMS[numbers[trial["trial_id"]]]
        assert trial["status"] == "completed"


def test_mlflow_has_one_parent_and_one_child_per_trial_with_each_evaluation_once(study):
    client = MlflowClient(f"sqlite:///{study['storage'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e5_efficiency")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and len({c.data.tags["trial_id"] for c in children}) == 3
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "dev_score")]
        assert sorted(steps) == list(range(1, EVALS + 1)), child.data.tags["trial_id"]
        assert child.data.tags["status"] == "completed"
