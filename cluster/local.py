"""A Ray cluster of processes on this machine: the tests' cluster and a rehearsal of a cloud one.

Every node is a real ``ray start`` with its own short temp dir and its own ports, token
authentication on with a token of its own, the dashboard (job server) on 127.0.0.1.
:meth:`LocalCluster.stop` ends only this cluster's processes, found by their temp dir and ended by
PID: ``ray stop`` would end every Ray process of the machine, a colleague's cluster included.

Every address is 127.0.0.1. Ray on Linux replaces a loopback node address by the host's routable
one (so that other machines could reach the node) and then listens on all interfaces; a cluster
of one machine needs neither, so the head keeps 127.0.0.1 through Ray's own single-machine switch
and a worker joins through Ray's CLI with that one substitution turned off (:data:`LOOPBACK_JOIN`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"
# Unix sockets live under the temp dir and their paths must stay under 108 bytes: keep it short.
TEMP_ROOT = "/tmp"
# A rehearsal moves a few MiB of tokenised data; Ray's default (30% of RAM per node) is wasteful.
OBJECT_STORE_MIB = 512
# Ray's switch for single-machine clusters: with it the node's address stays 127.0.0.1. (Its other
# effect, refusing `ray start --address` in that environment, does not concern a head.)
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# `ray start` as the `ray` script runs it, except that 127.0.0.1 stays 127.0.0.1 for a joining node.
LOOPBACK_JOIN = """
import sys
import ray._private.services as services
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, from the OS's ephemeral range (above Ray's worker ports)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def ray_executable() -> str:
    """The ``ray`` script of this interpreter's environment, so nodes run this venv's Python."""
    sibling = Path(sys.executable).parent / "ray"
    found = str(sibling) if sibling.is_file() else shutil.which("ray")
    if found is None:
        raise FileNotFoundError(f"no `ray` executable beside {sys.executable} or on PATH")
    return found


@dataclass
class LocalCluster:
    """A head node and any number of worker nodes; use it as a context manager.

    ``env`` is what a client command needs to reach the cluster (the token); the nodes' processes,
    and so every job driver and trial, also inherit ``node_env``.
    """

    num_cpus: int = 2
    node_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc-", dir=TEMP_ROOT)))
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    node_dirs: list[Path] = field(default_factory=list)

    @property
    def dashboard_url(self) -> str:
        """The dashboard and job server (``ray job submit --address``)."""
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}  # fmt: skip

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_head(self, *, timeout_s: float = 90) -> None:
        """``ray start --head``; returns once the job server and the head's agent answer.

        The job server hands every submission to the head node's agent and waits only 10 s for
        one (Ray's ``WAIT_AVAILABLE_AGENT_TIMEOUT``); on a busy machine the agent can be later
        than that, and a submission fails with "No available agent to submit job".
        """
        # Ray Client cannot be switched off once ray[client] is installed: give it a free port
        # rather than the shared default 10001.
        args = ["--head", f"--port={self.port}", f"--num-cpus={self.num_cpus}",
                f"--dashboard-host={LOOPBACK}", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}"]  # fmt: skip
        agent_port = self._ray_start(["ray", "start", *args], env=LOOPBACK_ENV, timeout_s=timeout_s)
        _wait_for(lambda: self._answers(f"{self.dashboard_url}/api/version"), timeout_s,
                  "the job server to answer")  # fmt: skip
        _wait_for(lambda: self._answers(f"http://{LOOPBACK}:{agent_port}/api/healthz"),
                  timeout_s, "the head node's agent to answer")  # fmt: skip

    def add_worker(self, *, num_cpus: int, resources: dict[str, float] | None = None,
                   timeout_s: float = 90) -> None:  # fmt: skip
        """``ray start --address`` one more node on this machine; returns once it is alive."""
        nodes = self.alive_nodes()
        args = [f"--address={LOOPBACK}:{self.port}", f"--num-cpus={num_cpus}"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        launcher = [sys.executable, "-c", LOOPBACK_JOIN, "start", *args]
        self._ray_start(launcher, env={}, timeout_s=timeout_s)
        _wait_for(lambda: len(self.alive_nodes()) > len(nodes), timeout_s, "the node to join")

    def alive_nodes(self) -> list[dict]:
        """The alive nodes as ``ray list nodes`` reports them (``node_id``, ``node_ip``, ...)."""
        out = self.ray("list", "nodes", f"--address={self.dashboard_url}", "--format=json",
                       "--filter", "state=ALIVE", timeout_s=60)  # fmt: skip
        return json.loads(out)

    def ray(self, *args: str, timeout_s: float = 120, cwd: Path | None = None) -> str:
        """Run a ``ray`` CLI command against this cluster; its stdout, or an error with its output."""
        proc = subprocess.run([ray_executable(), *args], env=self.env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"`ray {' '.join(args[:2])} ...` exited {proc.returncode}:\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")  # fmt: skip
        return proc.stdout

    def stop(self, *, grace_s: float = 10) -> list[int]:
        """End this cluster's processes and remove its temp dirs; the PIDs that were ended.

        Safe to call twice or after a failed start.
        """
        procs = processes_using(self.node_dirs)
        end_processes(procs, grace_s=grace_s)
        shutil.rmtree(self.root, ignore_errors=True)
        return [p.pid for p in procs]

    def _ray_start(self, command: list[str], *, env: dict[str, str], timeout_s: float) -> int:
        """Run ``command`` (``ray start ...``) for a new node with its own temp dir and ports;
        the port its dashboard agent listens on."""
        node_dir = self.root / f"n{len(self.node_dirs)}"
        node_dir.mkdir(parents=True)
        self.node_dirs.append(node_dir)
        agent_port = free_port()
        common = [
            f"--node-ip-address={LOOPBACK}", f"--temp-dir={node_dir}",
            f"--dashboard-agent-listen-port={agent_port}",  # the default 52365 may be taken
            f"--object-store-memory={OBJECT_STORE_MIB * 2**20}", "--disable-usage-stats",
        ]  # fmt: skip
        if command[0] == "ray":
            command = [ray_executable(), *command[1:]]
        proc = subprocess.run([*command, *common], env={**self.env, **self.node_env, **env},
                              capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"`ray start` exited {proc.returncode}:\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")  # fmt: skip
        return agent_port

    def _answers(self, url: str) -> bool:
        """Whether ``url`` answers 200 to a request carrying this cluster's token."""
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status == 200
        except OSError:
            return False


def processes_using(folders: list[Path]) -> list[psutil.Process]:
    """The processes whose command line names a path inside one of ``folders``, and all their
    descendants: for a node's temp dir, every process of that node.

    Ray's daemons name their node's temp dir on their command line; workers, agents and job
    drivers do not (they retitle themselves ``ray::…``) but descend from a daemon.
    """
    marks = [f"{d}{os.sep}" for d in folders] + [f"{d} " for d in folders]
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or ()) + " "
        if any(m in cmdline for m in marks):
            roots.append(p)
    found = {p.pid: p for p in roots}
    for p in roots:
        with contextlib.suppress(psutil.Error):
            found.update({c.pid: c for c in p.children(recursive=True)})
    found.pop(os.getpid(), None)
    return list(found.values())


def end_processes(procs: list[psutil.Process], *, grace_s: float = 10) -> None:
    """SIGTERM, ``grace_s`` to exit, then SIGKILL; in `ray stop`'s order: raylets first (their
    agents and workers fate-share with them), then the rest, the GCS last."""
    groups: dict[str, list[psutil.Process]] = {"raylet": [], "": [], "gcs_server": []}
    for p in procs:
        name = _name(p)
        groups[name if name in groups else ""].append(p)
    for group in groups.values():
        for p in group:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(group, timeout=grace_s)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)


def _wait_for(ready: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(1)


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""
