"""Node loss: a worker node dies while a trial runs on it; the trial runs again on another node
from its checkpoint and the study, a Ray job on ``ray start`` nodes on 127.0.0.1, completes.

The head has the job's driver and no CPU for trials, so the trials start on the one worker node.
That node is ended abruptly (SIGKILL to every process of it, found by its temp dir, as a crashed
machine would vanish); once Ray has marked it dead a replacement node joins, as an autoscaler
would add one, and the lost trial and the pending one run there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cluster.local import LocalCluster, processes_using

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
EVALS = 4
STUDY = ["python", "-m", "tuner.run", "e5_efficiency", "--preset", "smoke", "--num-samples", "2",
         "--set", f"evals={EVALS}", "--set", "max_steps=400"]  # fmt: skip
START_TIMEOUT_S = 600  # until a trial has reported its first evaluation
JOB_TIMEOUT_S = 900


def node_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    """A node's environment on a real cluster; the caches are the test's own."""
    return {"HF_HUB_OFFLINE": "1", "PEFT_TUNE_DATA_DIR": str(data_dir),
            "PEFT_TUNE_ADAPTERS": str(tmp_path / "adapters"),
            "PEFT_TUNE_CACHE_DIR": str(tmp_path / "tokens")}  # fmt: skip


def job_status(cluster: LocalCluster, submission_id: str) -> str:
    out = cluster.ray("list", "jobs", f"--address={cluster.dashboard_url}", "--format=json",
                      "--filter", f"submission_id={submission_id}")  # fmt: skip
    (job,) = json.loads(out)
    return job["status"]


def reporting_trial(study: Path) -> str | None:
    """The id of a trial that has reported some but not all of its evaluations."""
    for result in study.glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        if rows and rows[-1]["evaluation"] < EVALS:
            return result.parent.name.removeprefix("trial_")
    return None


def wait_for(ready, timeout_s: float, what: str, *, every_s: float = 1) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(every_s)


def test_a_study_survives_the_loss_of_a_node(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    # Importing tuner.run in this process sets Ray's single-machine switch, which refuses joining
    # nodes; here it belongs to the head alone, where cluster.local puts it.
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    storage = tmp_path / "results"
    study = storage / "e5_efficiency-smoke"
    with LocalCluster(num_cpus=0, node_env=node_env(tmp_path, data_dir)) as cluster:
        cluster.start_head()
        cluster.add_worker(num_cpus=1, resources={"node2": 1})
        cluster.ray("job", "submit", f"--address={cluster.dashboard_url}", "--submission-id=loss",
                    "--runtime-env=cluster/runtime_env.yaml", "--no-wait", "--",
                    *STUDY, "--storage", str(storage), cwd=REPO)  # fmt: skip
        wait_for(lambda: reporting_trial(study), START_TIMEOUT_S, "a trial's first evaluation",
                 every_s=0.2)  # fmt: skip
        lost = reporting_trial(study)  # it runs on the second node: no other node has a CPU
        for proc in processes_using([cluster.node_dirs[1]]):  # the node vanishes at once
            proc.kill()
        wait_for(lambda: len(cluster.alive_nodes()) == 1, 120, "Ray to mark the node dead")
        cluster.add_worker(num_cpus=1, resources={"node3": 1})
        wait_for(lambda: job_status(cluster, "loss") not in ("PENDING", "RUNNING"),
                 JOB_TIMEOUT_S, "the job to end", every_s=5)  # fmt: skip
        logs = cluster.ray("job", "logs", f"--address={cluster.dashboard_url}", "loss")
        assert job_status(cluster, "loss") == "SUCCEEDED", logs[-4000:]

    summary = json.loads((study / "summary.json").read_text())
    assert {t["trial_id"]: t["status"] for t in summary["trials"]} == {
        t["trial_id"]: "completed" for t in summary["trials"]
    }
    assert lost in {t["trial_id"] for t in summary["trials"]} and len(summary["trials"]) == 2
    rows = [json.loads(line) for line in (study / f"trial_{lost}" / "result.json").open()]
    evaluations = [r["evaluation"] for r in rows]
    assert evaluations[-1] == EVALS and sorted(set(evaluations)) == list(range(1, EVALS + 1))
    # it ran again from a checkpoint, not from the start
    assert any(r["iterations_since_restore"] == 1 and r["evaluation"] > 1 for r in rows), rows
