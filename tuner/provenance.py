"""What a run records about itself: git commit, package versions, device (STYLE habit 12)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "adapters", "peft", "ray", "optuna", "mlflow", "pandas")
ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """HEAD of the checkout (``-dirty`` if it has changes), or ``$PEFT_TUNE_GIT_COMMIT`` where the
    code runs from a copy without ``.git`` (a job's working dir, a bundle)."""
    if os.environ.get("PEFT_TUNE_GIT_COMMIT"):
        return os.environ["PEFT_TUNE_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip()
    if not commit:
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
        capture_output=True, text=True, timeout=5,
    ).stdout.strip()  # fmt: skip
    return commit + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance() -> dict[str, Any]:
    return {"git_commit": git_commit(), "versions": versions(), "device": device(),
            "host": platform.node()}  # fmt: skip
