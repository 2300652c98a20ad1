"""Ctrl-C (SIGINT to the driver) in the middle of a search: the study stops there and says how to
finish it, and ``--resume`` finishes it.

Tune catches the first SIGINT, saves its state and returns from ``fit()`` with trials still
running. Before this was caught, ``tuner.run`` went on as if the search had ended: it chose the
seeds phase's configurations from the unfinished search, counted the unfinished trials as
"stopped" and printed "done". Now it exits 130 with one line naming the unfinished trials and
the resume command, starts no seeds phase and writes no summary; ``--resume`` runs the search to
its end, then the seeds phase. A pooled study whose pool is lost ends the same way (exit 1 and
the pools-gone line) and resumes the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster.local import end_processes, processes_using

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
FIRST_TRIAL_TIMEOUT_S = 600


def test_a_study_interrupted_in_its_search_stops_there_and_resumes_to_the_end(tmp_path, data_dir):
    interrupt_and_resume(tmp_path, data_dir, "e1_single_task", ["--cpus-per-trial", "1"], [])


def test_a_pooled_study_interrupted_resumes_with_smaller_groups(tmp_path, data_dir):
    """As after a pool out of GPU memory: resumed with fewer rows per group, Tune restores the
    pooled trials as pooled ones and the study finishes, its record keeping the new size."""
    interrupt_and_resume(tmp_path, data_dir, "e4_budget", ["--fuse", "2"], ["--fuse", "1"])
    record = json.loads((tmp_path / "results" / "e4_budget-smoke" / "experiment.json").read_text())
    assert record["fuse"] == 1


def test_a_pooled_study_whose_pool_dies_stops_and_resumes_every_trial(tmp_path, data_dir):
    """The pool's process killed mid-search (as a pool out of GPU memory is lost): the study ends
    with the pools-gone line, its running trials saved as unfinished and its search not over, and
    ``--resume --fuse 1`` runs the search and the seeds phase to the end. Ended through a Tune
    stopper, the study saved its running trials as ended and its search as over: the resume ran
    none of them (an H100 study, 2026-12-05)."""
    interrupt_and_resume(tmp_path, data_dir, "e4_budget", ["--fuse", "2"], ["--fuse", "1"],
                         stop=kill_the_pool, exit_code=1,
                         last=r"error: every fused pool is gone \(.*\): the study stopped; "
                              r"--resume continues it once the GPUs are back")  # fmt: skip


def kill_the_pool(driver: subprocess.Popen, ray_tmp: Path) -> None:
    """SIGKILL to the study's pool actor (Ray titles its process ``ray::PoolActor...``)."""
    pools = [p for p in processes_using([ray_tmp])
             if "PoolActor" in " ".join(p.cmdline())]  # fmt: skip
    assert len(pools) == 1, [p.cmdline() for p in processes_using([ray_tmp])]
    pools[0].kill()


def interrupt(driver: subprocess.Popen, ray_tmp: Path) -> None:
    driver.send_signal(signal.SIGINT)  # the driver only, as `kill -INT` or `timeout` do


def interrupt_and_resume(
    tmp_path: Path,
    data_dir: Path,
    name: str,
    given: list[str],
    on_resume: list[str],
    *,
    stop=interrupt,
    exit_code: int = 130,
    last: str | None = None,
) -> None:
    """``name``'s smoke study with 6 search trials, stopped after its first finished trial
    (Ctrl-C; or ``stop``, ending with ``exit_code`` and the line ``last``), then ``--resume``
    (with ``on_resume``) to the end."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ri-", dir="/tmp"))  # Ray's socket paths stay short
    storage, db = tmp_path / "results", tmp_path / "mlflow.db"
    env = {**os.environ, "PEFT_TUNE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           "PEFT_TUNE_CACHE_DIR": str(tmp_path / "tokens"), "RAY_TMPDIR": str(ray_tmp)}  # fmt: skip
    command = [sys.executable, "-m", "tuner.run", name, "--preset", "smoke", "--num-samples", "6",
               *given, "--storage", str(storage), "--tracking-uri", f"sqlite:///{db}"]  # fmt: skip
    driver = None
    try:
        driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        lines = []
        deadline = time.monotonic() + FIRST_TRIAL_TIMEOUT_S
        assert driver.stderr is not None
        for line in driver.stderr:  # the search's first finished trial, then Ctrl-C
            lines.append(line)
            if re.match(r"\[1/6\] ", line):
                break
            assert time.monotonic() < deadline, "no finished trial in time"
        else:
            pytest.fail("the study ended before it could be interrupted:\n" + "".join(lines))
        stop(driver, ray_tmp)
        rest = driver.stderr.read()
        driver.wait(timeout=300)
        err = "".join(lines) + rest
        assert driver.returncode == exit_code, err[-3000:]
        said = err.strip().splitlines()[-1]
        last = last or (rf"interrupted: {name}-smoke left \d+ of 6 trials "
                        rf"unfinished; its state is saved: finish it with `python -m tuner.run "
                        rf"{name} --resume` and the first run's --preset, --set and "
                        r"--storage")  # fmt: skip
        assert re.fullmatch(last, said), said
        assert not (storage / f"{name}-smoke-seeds").exists()  # no seeds from half a search
        assert not (storage / f"{name}-smoke" / "summary.json").exists()
        assert "done in" not in err

        resumed = subprocess.run([*command, "--resume", *on_resume], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=900,
                                 start_new_session=True)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        summary = json.loads((storage / f"{name}-smoke" / "summary.json").read_text())
        assert sum(summary["status_counts"].values()) == 6  # every search trial, once
        assert summary["seeds"]["trials"]  # then the seeds phase, from the finished search
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        end_processes(processes_using([ray_tmp]), grace_s=5)
        shutil.rmtree(ray_tmp, ignore_errors=True)
