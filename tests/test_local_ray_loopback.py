"""A local Ray started by tuner.run listens on loopback only (security by default)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent("""
    import ipaddress, os, psutil
    from tuner.runner import connect_ray
    import ray
    connect_ray(cpus_per_trial=1.0)
    me = psutil.Process()
    tree = {p.pid for p in me.children(recursive=True)} | {me.pid}
    ray_pids = {p.pid for p in psutil.process_iter(["name", "cmdline"])
                if "ray" in " ".join(p.info["cmdline"] or []) and p.pid in tree}
    ray_pids |= {c.pid for c in psutil.process_iter() if c.ppid() in tree}
    listening = [c for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid in (tree | ray_pids)]
    def loopback(ip):
        address = ipaddress.ip_address(ip)
        return (getattr(address, "ipv4_mapped", None) or address).is_loopback
    bad = [f"{c.laddr.ip}:{c.laddr.port}" for c in listening if not loopback(c.laddr.ip)]
    print("listening", len(listening), "non-loopback", bad)
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ, "the switch must not leak"
    ray.shutdown()
""")


def test_local_ray_binds_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",
                                                           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("listening"))
    count = int(line.split()[1])
    assert count > 0, line  # the probe saw Ray's servers
    assert line.endswith("non-loopback []"), line
