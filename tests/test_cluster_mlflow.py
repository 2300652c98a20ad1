"""``python -m cluster.mlflow_server``: a real MLflow server on 127.0.0.1, used through its REST API
the way the study driver uses it, then stopped with nothing left behind."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.local import end_processes, free_port, processes_using
from cluster.mlflow_server import ServerConfig, check_port_free, is_loopback
from search_spaces.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


def server_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.mlflow_server", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip


def read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The next line of ``proc``'s stdout, or '' if none came in time or the process ended."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().strip() if ready else ""


# --- configuration (no server) -----------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    ServerConfig(host=host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "mlflow.example.com"])
def test_other_hosts_need_allow_remote(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="--allow-remote"):
        ServerConfig(host=host)
    ServerConfig(host=host, allow_remote=True)


def test_config_errors_name_the_bad_value() -> None:
    with pytest.raises(ConfigError, match="--port=70000"):
        ServerConfig(port=70000)
    with pytest.raises(ConfigError, match="sqlite:////"):
        ServerConfig(backend_store_uri="/tmp/mlflow.db")
    with pytest.raises(ConfigError, match="--workers=0"):
        ServerConfig(workers=0)


def test_command_serves_artifacts_and_uri_avoids_the_wildcard() -> None:
    config = ServerConfig(host="0.0.0.0", port=5123, allow_remote=True)
    assert config.tracking_uri == "http://127.0.0.1:5123"
    command = config.command()
    assert "--serve-artifacts" in command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert ServerConfig(host="::1", port=5123).tracking_uri == "http://[::1]:5123"


def test_port_in_use_is_a_config_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--port={port}"):
            check_port_free("127.0.0.1", port)


def test_wildcard_host_is_refused_in_one_line() -> None:
    proc = server_cli("--host", "0.0.0.0")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --host='0.0.0.0'")
    assert "--allow-remote" in lines[0]


# --- a real server -----------------------------------------------------------------------------


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """The server on a free 127.0.0.1 port with its stores under ``tmp_path``; ends it and
    anything it started (found by ``tmp_path`` on their command lines) in any case."""
    port = free_port()
    artifacts = tmp_path / "artifacts"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.mlflow_server", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}",
         "--artifacts-destination", str(artifacts)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield proc, f"http://127.0.0.1:{port}", artifacts
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        end_processes(processes_using([tmp_path]), grace_s=5)


@pytest.mark.slow  # a real server: ~10 s alone, more on a busy machine
def test_server_logs_and_serves_runs(server: tuple, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    proc, uri, artifacts = server
    started = time.monotonic()
    assert read_line(proc, START_TIMEOUT_S) == uri, "the URI is printed once /health answers"
    print(f"MLflow server ready in {time.monotonic() - started:.1f} s")

    client = MlflowClient(uri)
    experiment_id = client.create_experiment("cluster-test")
    run = client.create_run(experiment_id, tags={"role": "study"})
    run_id = run.info.run_id
    client.log_param(run_id, "method", "lora")
    for step, value in enumerate([0.5, 0.61, 0.72], start=1):
        client.log_metric(run_id, "dev_score", value, step=step)
    client.log_text(run_id, '{"rank": 8}', "weights/method_config.json")
    client.set_terminated(run_id, "FINISHED")

    again = MlflowClient(uri).get_run(run_id)
    assert again.data.params == {"method": "lora"}
    assert again.data.metrics["dev_score"] == pytest.approx(0.72)
    history = client.get_metric_history(run_id, "dev_score")
    assert [m.step for m in history] == [1, 2, 3]
    assert again.info.artifact_uri.startswith("mlflow-artifacts:"), "uploads go through the server"
    assert [f.path for f in client.list_artifacts(run_id, "weights")] == [
        "weights/method_config.json"
    ]
    local = client.download_artifacts(run_id, "weights/method_config.json", str(tmp_path))
    assert Path(local).read_text() == '{"rank": 8}'
    assert list(artifacts.rglob("method_config.json")), "stored under --artifacts-destination"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=STOP_TIMEOUT_S) == 0
    check_port_free("127.0.0.1", int(uri.rsplit(":", 1)[1]))  # the port is free again
    assert processes_using([tmp_path]) == [], "no server process outlives the command"


def test_no_process_of_ours_is_left(tmp_path: Path) -> None:
    """``processes_using`` finds a process by a folder on its command line, and only it."""
    marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               str(tmp_path / "marker")])  # fmt: skip
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        found = processes_using([tmp_path])
        assert [p.pid for p in found] == [marked.pid]
        end_processes(found, grace_s=5)
        assert processes_using([tmp_path]) == []
        assert other.poll() is None
    finally:
        for p in (marked, other):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
