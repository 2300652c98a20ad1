"""Studies submitted as Ray jobs to real ``ray start`` clusters on 127.0.0.1.

Each test starts its own cluster (own temp dir, own free ports, own token), submits with the
shipped cluster/runtime_env.yaml exactly as docs/CLUSTER.md says, and ends only that cluster's
processes, whatever happens. Node-level settings go on the nodes, as on a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import psutil
import pytest

from cluster.local import LocalCluster, processes_using

REPO = Path(__file__).resolve().parents[1]
SMOKE_JOB_TIMEOUT_S = 900  # ~1 min alone on 2 CPUs; generous for a loaded CI machine
PROBE_JOB_TIMEOUT_S = 300
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1"}

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def node_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    """What a node's environment holds on a real cluster; the caches are the test's own."""
    return {"HF_HUB_OFFLINE": "1", "PEFT_TUNE_DATA_DIR": str(data_dir),
            "PEFT_TUNE_ADAPTERS": str(tmp_path / "adapters"),
            "PEFT_TUNE_CACHE_DIR": str(tmp_path / "tokens")}  # fmt: skip


def submit(cluster: LocalCluster, submission_id: str, *entrypoint: str, timeout_s: float) -> str:
    """``ray job submit`` from the repository root; waits for the end, returns the job's output."""
    return cluster.ray(
        "job", "submit", f"--address={cluster.dashboard_url}", f"--submission-id={submission_id}",
        "--runtime-env=cluster/runtime_env.yaml", "--", *entrypoint,
        timeout_s=timeout_s, cwd=REPO,
    )  # fmt: skip


def listening_addresses(cluster: LocalCluster) -> set[str]:
    """The addresses that the cluster's processes accept TCP connections on."""
    addresses = set()
    for proc in processes_using(cluster.node_dirs):
        with contextlib.suppress(psutil.Error):
            conns = proc.net_connections(kind="tcp")
            addresses |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    return addresses


def job_status(cluster: LocalCluster, submission_id: str) -> str:
    """The job's status as the state API reports it (PENDING, RUNNING, SUCCEEDED, FAILED...)."""
    out = cluster.ray("list", "jobs", f"--address={cluster.dashboard_url}", "--format=json",
                      "--filter", f"submission_id={submission_id}")  # fmt: skip
    (job,) = json.loads(out)
    return job["status"]


def test_smoke_study_as_a_ray_job(tmp_path: Path, data_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "results"
    started = time.monotonic()
    with LocalCluster(num_cpus=2, node_env=node_env(tmp_path, data_dir)) as cluster:
        cluster.start_head()
        up_s = time.monotonic() - started
        output = submit(cluster, "smoke", "python", "-m", "tuner.run", "e4_budget",
                        "--preset", "smoke", "--storage", str(storage),
                        timeout_s=SMOKE_JOB_TIMEOUT_S)  # fmt: skip
        assert job_status(cluster, "smoke") == "SUCCEEDED", output[-3000:]
        job_s = time.monotonic() - started - up_s
    print(f"head up in {up_s:.0f} s, smoke job {job_s:.0f} s, "
          f"down in {time.monotonic() - started - up_s - job_s:.0f} s")  # fmt: skip

    study = storage / "e4_budget-smoke"
    summary = json.loads((study / "summary.json").read_text())
    trial_ids = {t["trial_id"] for t in summary["trials"]}
    assert len(trial_ids) == 4  # the smoke preset's num_samples
    assert (study / "experiment.json").is_file()

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e4_budget")
    parents = client.search_runs([experiment.experiment_id], "tags.role = 'study'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
    )
    seeds = {t["trial_id"] for t in summary["seeds"]["trials"]}  # the seeds phase, same parent
    assert sorted(c.data.tags["trial_id"] for c in children) == sorted(trial_ids | seeds)
    assert all("dev_score" in c.data.metrics for c in children)


def test_trials_spread_over_two_nodes_into_one_storage(tmp_path: Path, data_dir: Path) -> None:
    storage = tmp_path / "results"
    with LocalCluster(num_cpus=2, node_env=node_env(tmp_path, data_dir)) as cluster:
        cluster.start_head()
        cluster.add_worker(num_cpus=1, resources={"node2": 1})
        nodes = cluster.alive_nodes()
        assert listening_addresses(cluster) <= LOOPBACK_ADDRESSES
        submit(cluster, "probe", "python", "-m", "cluster.probe", "--storage", str(storage),
               timeout_s=PROBE_JOB_TIMEOUT_S)  # fmt: skip
        assert job_status(cluster, "probe") == "SUCCEEDED"

    assert len(nodes) == 2 and {n["node_ip"] for n in nodes} == {"127.0.0.1"}
    second = next(n["node_id"] for n in nodes if n["resources_total"].get("node2"))
    verdict = json.loads((storage / "cluster-probe" / "placement.json").read_text())
    assert verdict["ok"], verdict
    assert set(verdict["trials_per_node"]) == {n["node_id"] for n in nodes}
    assert verdict["trials_per_node"][second] >= 1
    # Every trial, whichever node ran it, wrote its checkpoint into the one storage path.
    checkpoints = list((storage / "cluster-probe").glob("*/checkpoint_*/node.json"))
    written_by = {json.loads(p.read_text())["node_id"] for p in checkpoints}
    assert len(checkpoints) == verdict["trials"] and written_by == set(verdict["trials_per_node"])
