"""``python -m cluster.mlflow_server``: the MLflow tracking server that a cluster's studies share.

python -m cluster.mlflow_server                    # 127.0.0.1:5000, store beside the results
python -m cluster.mlflow_server --port 5001 --backend-store-uri sqlite:////nfs/peft/mlflow.db
python -m cluster.mlflow_server --host 0.0.0.0 --allow-remote   # only behind an auth proxy

A real ``mlflow server`` with ``--serve-artifacts``: clients on any node send artifacts through the
server, so no node needs credentials for the artifact store. The tracking URI goes to stdout once
the server answers ``/health`` (pass it as ``python -m tuner.run ... --tracking-uri URI``);
SIGINT or SIGTERM stops the server and everything it started.

MLflow's server has no authentication of its own: it listens on 127.0.0.1 unless ``--allow-remote``
says that something in front of it (an SSH tunnel, a private network and an authenticating
proxy) decides who may reach it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from search_spaces.errors import ConfigError
from tuner.cli import run_cli
from tuner.study import DEFAULT_RESULTS

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 120  # a first start creates and migrates the database: ~10 s on 2 CPUs
STOP_GRACE_S = 10


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); names count as remote."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens and stores; checked when built, before anything starts."""

    host: str = LOOPBACK
    port: int = 5000
    backend_store_uri: str = f"sqlite:///{DEFAULT_RESULTS / 'mlflow.db'}"
    artifacts_destination: str = str(DEFAULT_RESULTS / "mlartifacts")
    # One process: a sqlite store serialises writes anyway; raise it with a server database.
    workers: int = 1
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"--port={self.port} must be in 1..65535")
        if self.workers < 1:
            raise ConfigError(f"--workers={self.workers} must be >= 1")
        if not is_loopback(self.host) and not self.allow_remote:
            raise ConfigError(
                f"--host={self.host!r} would open MLflow, which has no authentication, beyond "
                "this machine: keep 127.0.0.1 and reach it through an SSH tunnel, or pass "
                "--allow-remote when an authenticating proxy or private network guards it"
            )
        if "://" not in self.backend_store_uri:
            raise ConfigError(
                f"--backend-store-uri={self.backend_store_uri!r} is not a URI: use "
                "sqlite:////absolute/path/mlflow.db or postgresql://user@host/db"
            )

    @property
    def tracking_uri(self) -> str:
        """The URI clients use: a wildcard host is reached through loopback from here."""
        host = LOOPBACK if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        """The ``mlflow server`` command line, run with this interpreter."""
        return [
            sys.executable, "-m", "mlflow", "server",
            "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
            "--backend-store-uri", self.backend_store_uri,
            "--serve-artifacts", "--artifacts-destination", self.artifacts_destination,
        ]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cluster.mlflow_server", description=__doc__.split("\n")[0]
    )
    d = ServerConfig
    p.add_argument("--host", default=d.host, help=f"interface to listen on (default {d.host})")
    p.add_argument("--port", type=int, default=d.port, help=f"default {d.port}")
    p.add_argument("--backend-store-uri", default=d.backend_store_uri,
                   help=f"runs, params, metrics (default {d.backend_store_uri})")  # fmt: skip
    p.add_argument("--artifacts-destination", default=d.artifacts_destination,
                   help=f"folder or s3:// URI for artifacts (default {d.artifacts_destination})")  # fmt: skip
    p.add_argument("--workers", type=int, default=d.workers, help=f"default {d.workers}")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other than loopback (put authentication in front)")  # fmt: skip
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    config = ServerConfig(
        host=args.host, port=args.port, backend_store_uri=args.backend_store_uri,
        artifacts_destination=_absolute(args.artifacts_destination), workers=args.workers,
        allow_remote=args.allow_remote,
    )  # fmt: skip
    prepare_storage(config)
    check_port_free(config.host, config.port)
    return serve(config)


def prepare_storage(config: ServerConfig) -> None:
    """Create the local folders the stores live in (MLflow does not create a sqlite parent)."""
    if config.backend_store_uri.startswith("sqlite:///"):
        Path(config.backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    if "://" not in config.artifacts_destination:
        Path(config.artifacts_destination).mkdir(parents=True, exist_ok=True)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port that another server listens on (connections of a stopped server that are
    still in TIME_WAIT do not count: the server binds with SO_REUSEADDR, as we do here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"--port={port} on {host} is not available ({exc.strerror}): choose another"
            ) from None


def serve(config: ServerConfig) -> int:
    """Run the server until it exits or we are signalled; its exit code (0 when we stopped it)."""
    # A session of its own: the server's workers are stopped with it, as one process group.
    # Its output goes to stderr: stdout carries only the tracking URI, for scripts.
    proc = subprocess.Popen(config.command(), stdout=sys.stderr, start_new_session=True)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        _signal_group(proc, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if wait_ready(config.tracking_uri, proc):
            print(config.tracking_uri, flush=True)
            log(f"MLflow at {config.tracking_uri} (store {config.backend_store_uri}, "
                f"artifacts {config.artifacts_destination}); Ctrl-C stops it")  # fmt: skip
        code = proc.wait()
        return 0 if stopping else code
    finally:
        _stop_group(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)


def wait_ready(uri: str, proc: subprocess.Popen, timeout_s: float = READY_TIMEOUT_S) -> bool:
    """Poll ``/health`` until it answers; False if the server exited or time ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            if r.status == 200:
                return True
        time.sleep(0.5)
    if proc.poll() is None:
        log(f"no answer from {uri}/health after {timeout_s:.0f} s; still waiting on the server")
    return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after a grace period."""
    _signal_group(proc, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S)
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _absolute(location: str) -> str:
    return location if "://" in location else str(Path(location).expanduser().resolve())


def log(message: str) -> None:
    print(f"[peft-tune] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
