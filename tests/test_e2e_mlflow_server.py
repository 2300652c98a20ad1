"""A study logs to a real ``mlflow server`` over HTTP exactly as it does to a local store."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cluster_mlflow import START_TIMEOUT_S, read_line, server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def test_a_smoke_study_logs_its_runs_and_weights_through_the_server(server, tmp_path, data_dir):  # noqa: F811
    from mlflow.tracking import MlflowClient

    proc, uri, artifacts = server
    assert read_line(proc, START_TIMEOUT_S) == uri
    env = {**os.environ, "PEFT_TUNE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           "PEFT_TUNE_ADAPTERS": str(tmp_path / "adapters"),
           "PEFT_TUNE_CACHE_DIR": str(tmp_path / "tokens")}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "tuner.run", "e5_efficiency", "--preset", "smoke",
         "--storage", str(tmp_path / "results"), "--tracking-uri", uri],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert not (tmp_path / "results" / "mlflow.db").exists(), "nothing logged to a local store"

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("e5_efficiency").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 3 and len([r for r in runs if r.data.tags.get("role") == "study"]) == 1
    for child in children:
        assert child.data.tags["status"] == "completed"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "dev_score")] == [1, 2]
        names = [a.path for a in client.list_artifacts(child.info.run_id, "weights")]
        assert "weights/method.safetensors" in names
    assert any(p.name == "method.safetensors" for p in artifacts.rglob("*")), "served, not local"
