"""A driver killed while it trains the source adapters, then ``--resume``: the study starts.

Before Tune's first save a study has only its record (``experiment.json``, written before the
source adapters); ``--resume`` then reuses the adapters stored whole, retrains the rest (the store
never keeps a half-written one: tests/test_reliability_store.py kills a writer mid-put) and runs
the search from its start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_reliability_resume import stderr_lines

from cluster.local import end_processes, processes_using
from trainables.source_store import STAGING

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
TRAINING = "to train ("  # the driver's line as it starts training source adapters


def test_a_study_killed_while_training_source_adapters_resumes(tmp_path: Path, data_dir) -> None:
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    storage, adapters = tmp_path / "results", tmp_path / "adapters"
    env = {**os.environ, "PEFT_TUNE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           "PEFT_TUNE_ADAPTERS": str(adapters), "PEFT_TUNE_CACHE_DIR": str(tmp_path / "tokens"),
           "RAY_TMPDIR": str(ray_tmp)}  # fmt: skip
    command = [sys.executable, "-m", "tuner.run", "e4_budget", "--preset", "smoke",
               "--storage", str(storage), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]  # fmt: skip
    try:
        driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        lines, seen = stderr_lines(driver.stderr), []
        deadline = time.monotonic() + 300
        while not any(TRAINING in line for line in seen):
            assert time.monotonic() < deadline, "no source adapter training in time"
            line = lines.get(timeout=300)
            assert line is not None, "".join(seen)[-3000:]
            seen.append(line)
        os.killpg(driver.pid, signal.SIGKILL)  # mid-training: no Tune state yet
        driver.wait()
        study = storage / "e4_budget-smoke"
        assert (study / "experiment.json").is_file() and not (study / "tuner.pkl").exists()
        end_processes(processes_using([ray_tmp]), grace_s=5)

        resumed = subprocess.run([*command, "--resume"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=900)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        assert "source adapters:" in resumed.stderr
        summary = json.loads((study / "summary.json").read_text())
        assert len(summary["trials"]) == 4 and summary["work"]["trials_outside_budget"] == 0
        assert summary["work"]["source_adapters_needed"] == 3
        leftovers = [p.name for p in adapters.rglob(f"{STAGING}*")]
        assert leftovers == []  # the killed writer's staging folder was swept, never loaded
    finally:
        end_processes(processes_using([ray_tmp]), grace_s=5)
