"""NVIDIA MPS: the kernels of several processes on one GPU at once, instead of time-sliced.

Trials that share a GPU as processes (``--gpus-per-trial 0.0625``: 16 of them) gain much from it:
16 graphed LoRA trials on one H100 reached 1.88x one trial's samples/s without MPS and 3.29x under
it (docs/BENCHMARKS.md, "Packing with graphs"). A study does not start the daemon itself (it is a
machine-wide service, started before Ray so that every worker connects to it, docs/CLUSTER.md);
it says so when it runs without one (:func:`sharing_note`). The benchmarks start a private one
for a measurement (:func:`daemon`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

PIPE_DEFAULT = "/tmp/nvidia-mps"  # where CUDA looks for the control daemon's pipes by default
CONTROL = "nvidia-cuda-mps-control"


def running(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a control daemon's pipe is where this process's CUDA would look for one."""
    pipes = Path(environ.get("CUDA_MPS_PIPE_DIRECTORY") or PIPE_DEFAULT)
    return (pipes / "control").exists()


def sharing_note(
    gpus_per_trial: float,
    *,
    cluster_gpus: float,
    local: bool,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """The line a study logs when its trials share this machine's GPUs without MPS; None when
    they do not share one, run under MPS, or run on a cluster whose nodes this process cannot see."""
    if not local or cluster_gpus < 1 or not 0 < gpus_per_trial < 1 or running(environ):
        return None
    share = round(1 / gpus_per_trial)
    return (f"MPS: no daemon runs here, so the {share} trials sharing each GPU time-slice it "
            f"(16 graphed trials: 1.9x one trial's samples/s without MPS, 3.3x under it, "
            f"docs/BENCHMARKS.md); start one before the study: {CONTROL} -d")  # fmt: skip


@contextlib.contextmanager
def daemon(folder: Path) -> Iterator[bool]:
    """A private MPS control daemon for the block (its pipes and logs under ``folder``, this
    process's environment pointed at them), if ``nvidia-cuda-mps-control`` exists; yields
    whether it started. Processes started inside the block inherit it."""
    control = shutil.which(CONTROL)
    if control is None:
        yield False
        return
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"),
           "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}  # fmt: skip
    for key in ("pipe", "log"):
        (folder / key).mkdir(parents=True, exist_ok=True)
    started = subprocess.run([control, "-d"], env=env, check=False).returncode == 0
    saved = {k: os.environ.get(k) for k in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")}
    if started:
        os.environ.update({k: env[k] for k in saved})
    try:
        yield started
    finally:
        if started:
            subprocess.run([control], input=b"quit\n", env=env, check=False)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


__all__ = ["PIPE_DEFAULT", "daemon", "running", "sharing_note"]
