"""A driver killed between two of Tune's state saves, then ``--resume``: no store keeps a ghost.

Tune saves its state every ~10 s by default (``TUNE_GLOBAL_CHECKPOINT_S``, left at its default
here). A trial that starts after the last save is lost with the driver: MLflow already has its
child run and the searcher may hold it, but the restored Tune does not know it. Two real studies
on a local Ray, each in its own process group, each killed (SIGKILL to the group) in that window:

* ``search``: e4_budget smoke, 12 trials, killed after the first finished trial, once MLflow
  holds a child of a trial that the saved Tune state does not;
* ``seeds``: e1_single_task smoke, one trial at a time, killed the same way in its second Tune
  phase (``-seeds``).

After ``--resume``: every MLflow child is a trial Tune ran or one closed as killed (none RUNNING,
no trial id twice), Optuna's saved study holds no RUNNING trial, the report counts the killed
trial once. The source-adapter stage's kill is tests/test_reliability_store.py (a writer killed
mid-put); the pure parts are tests/test_reconcile.py.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_reliability_recovery import saved_trials

from cluster.local import end_processes, processes_using
from tuner.reconcile import KILLED, KILLED_REASON

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
STUDIES = {  # kind -> (command line, experiment, the Tune phase killed, its MLflow phase tag)
    "search": (["e4_budget", "--preset", "smoke", "--num-samples", "12"], "e4_budget",
               "e4_budget-smoke", "search"),
    # one trial at a time: the next one starts after its predecessor's last checkpoint forced a
    # save, and stays unsaved until its own first checkpoint (two at once: a few 100 ms, missed)
    "seeds": (["e1_single_task", "--preset", "smoke", "--num-samples", "4",
               "--cpus-per-trial", "2"], "e1_single_task", "e1_single_task-smoke-seeds", "seeds"),
}  # fmt: skip
KILL_TIMEOUT_S = 600
WINDOW_TIMEOUT_S = 120  # after the first finished trial, until a trial started since the last save
RESUME_TIMEOUT_S = 600


def children(db: Path) -> dict[str, dict[str, str]]:
    """run id -> the tags that matter, of every child run in the sqlite store (read-only)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        rows = con.execute(
            "SELECT run_uuid, key, value FROM tags WHERE key IN "
            "('trial_id', 'phase', 'mlflow.parentRunId')"
        ).fetchall()
    runs: dict[str, dict[str, str]] = {}
    for run_id, key, value in rows:
        runs.setdefault(run_id, {})[key] = value
    return {k: v for k, v in runs.items() if "mlflow.parentRunId" in v and "trial_id" in v}


def unsaved(db: Path, folder: Path, phase: str) -> set[str]:
    """Trial ids of ``phase`` that MLflow holds and the last saved Tune state does not."""
    try:
        logged = {t["trial_id"] for t in children(db).values() if t.get("phase") == phase}
    except sqlite3.Error:  # being written
        return set()
    saved = saved_trials(folder)
    return logged - set(saved) if saved else set()


def stderr_lines(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def kill_in_the_window(driver: subprocess.Popen, log, *, db: Path, folder: Path, phase: str,
                       seeds: bool) -> None:  # fmt: skip
    """Wait for the phase's first finished trial (its ``[1/N]`` line), then for a trial that
    MLflow holds and Tune's saved state does not; SIGKILL the driver's process group."""
    lines = stderr_lines(driver.stderr)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    in_phase = not seeds
    while True:
        assert time.monotonic() < deadline, "no finished trial in time"
        line = lines.get(timeout=KILL_TIMEOUT_S)
        assert line is not None, "the study ended before it could be interrupted"
        log.write(line)
        in_phase = in_phase or line.startswith(f"[peft-tune] {folder.name}:")
        if in_phase and re.match(r"\[1/\d+\] ", line):
            break
    deadline = time.monotonic() + WINDOW_TIMEOUT_S
    while not unsaved(db, folder, phase):
        assert driver.poll() is None, "the study ended before a trial started unsaved"
        assert time.monotonic() < deadline, "no trial started after Tune's last save in time"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    while not lines.empty() and (line := lines.get()) is not None:
        log.write(line)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")  # shared: the second study reuses what it can


@pytest.fixture(scope="module", params=list(STUDIES))
def study(request, tmp_path_factory, data_dir, adapters):
    kind = request.param
    args, experiment, phase_folder, phase = STUDIES[kind]
    tmp = tmp_path_factory.mktemp(f"resume-{kind}")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # Ray's socket paths stay short
    storage, db = tmp / "results", tmp / "mlflow.db"
    env = {**os.environ, "PEFT_TUNE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           "PEFT_TUNE_ADAPTERS": str(adapters), "PEFT_TUNE_CACHE_DIR": str(tmp / "tokens"),
           "RAY_TMPDIR": str(ray_tmp)}  # fmt: skip
    env.pop("TUNE_GLOBAL_CHECKPOINT_S", None)  # Tune's default period: the window is real
    command = [sys.executable, "-m", "tuner.run", *args, "--storage", str(storage),
               "--tracking-uri", f"sqlite:///{db}"]  # fmt: skip
    folder = storage / phase_folder
    driver = None
    try:
        with open(tmp / "first.log", "w") as log:
            driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
            kill_in_the_window(driver, log, db=db, folder=folder, phase=phase,
                               seeds=kind == "seeds")  # fmt: skip
        at_kill = {t["trial_id"]: t for t in children(db).values() if t.get("phase") == phase}
        resumed_from = saved_trials(folder)  # the newest state: what --resume restores
        deadline = time.monotonic() + 60  # Ray's processes share the driver's fate
        while processes_using([ray_tmp]) and time.monotonic() < deadline:
            time.sleep(1)
        orphans = [p.pid for p in processes_using([ray_tmp])]
        started = time.monotonic()
        resumed = subprocess.run([*command, "--resume"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=RESUME_TIMEOUT_S, start_new_session=True)  # fmt: skip
        (tmp / "resume.log").write_text(resumed.stderr)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        resume_s = time.monotonic() - started
        report = subprocess.run([sys.executable, "-m", "analysis.report", experiment,
                                 "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp / "report")],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert report.returncode == 0, report.stderr[-4000:]
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        end_processes(processes_using([ray_tmp]), grace_s=5)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lost = set(at_kill) - set(resumed_from)
    return {"kind": kind, "folder": folder, "db": db, "experiment": experiment, "phase": phase,
            "lost": lost, "orphans": orphans, "resume_log": resumed.stderr, "resume_s": resume_s,
            "report": (tmp / "report" / "report.md").read_text()}  # fmt: skip


def mlflow_runs(study):
    client = MlflowClient(f"sqlite:///{study['db']}")
    experiment = client.get_experiment_by_name(study["experiment"])
    runs = client.search_runs([experiment.experiment_id], max_results=10_000)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return parents, kids


def tune_trial_ids(folder: Path) -> set[str]:
    return set(saved_trials(folder))  # the final state, saved by the resumed driver


def test_the_kill_fell_in_the_window_and_left_no_ray_process(study):
    assert study["lost"], "the driver was killed with every started trial saved"
    assert study["orphans"] == []


def test_no_child_is_left_running_and_none_is_there_twice(study):
    parents, kids = mlflow_runs(study)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert [k.info.status for k in kids if k.info.status == "RUNNING"] == []
    trial_ids = [k.data.tags["trial_id"] for k in kids]
    assert len(trial_ids) == len(set(trial_ids))


def test_the_children_are_the_trials_tune_ran_plus_the_killed(study):
    _, kids = mlflow_runs(study)
    phase = [k for k in kids if k.data.tags.get("phase") == study["phase"]]
    killed = {k.data.tags["trial_id"] for k in phase if k.data.tags["status"] == KILLED}
    ran = tune_trial_ids(study["folder"])
    assert killed == study["lost"]
    assert not killed & ran
    assert {k.data.tags["trial_id"] for k in phase} == ran | killed
    assert len(phase) == len(ran) + len(killed)
    for kid in phase:
        if kid.data.tags["trial_id"] in killed:
            assert kid.info.status == "KILLED"
            assert kid.data.tags["killed_reason"].startswith(KILLED_REASON)
        else:
            assert kid.data.tags["status"] in ("completed", "stopped"), kid.data.tags
    for trial_id in killed:
        assert f"trial {trial_id} closed as killed in MLflow" in study["resume_log"]


def test_optunas_saved_study_holds_no_running_trial(study):
    newest = sorted(study["folder"].glob("searcher-state-*.pkl"))[-1]
    state = pickle.loads(newest.read_bytes())  # as Ray saved it, not reconciled again on load
    trials = state["_ot_study"].get_trials(deepcopy=False)
    assert [t.number for t in trials if t.state.name == "RUNNING"] == []
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    for trial_id, ot_trial in state["_ot_trials"].items():
        frozen = trials[ot_trial.number]
        if trial_id in study["lost"]:
            assert frozen.state.name == "FAIL" and frozen.user_attrs["killed_reason"]
        else:
            assert "killed_reason" not in frozen.user_attrs


def test_every_arm_of_the_seeds_phase_ran_once(study):
    if study["kind"] != "seeds":
        pytest.skip("the search phase samples; only the seeds phase is a grid")
    summary = json.loads(
        (study["folder"].parent / "e1_single_task-smoke" / "summary.json").read_text()
    )
    arms = [(t["config"]["method"], t["config"]["seed"]) for t in summary["seeds"]["trials"]]
    assert len(arms) == len(set(arms)) == len(tune_trial_ids(study["folder"]))


def test_the_report_counts_the_killed_trial_once(study):
    _, kids = mlflow_runs(study)
    counts = re.search(r"\*\*Trials:\*\* (\d+) \(([^)]*)\)", study["report"])
    assert counts, study["report"][:2000]
    assert int(counts.group(1)) == len(kids)
    assert f"{len(study['lost'])} killed" in counts.group(2)
    for trial_id in study["lost"]:
        line = next(x for x in study["report"].splitlines() if "killed trial(s)" in x)
        assert line.count(trial_id) == 1
