"""``python -m tuner.bench --suite packing --via tune``: the packing levels as Tune runs of the
product's trainable. The pure parts on fakes, then (-m slow) a real local Ray on CPU running the
tiny random BERT on 256 SST-2 rows at levels 1 and 2, as a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster.local import end_processes, processes_using
from search_spaces.errors import ConfigError
from search_spaces.shapes import MINILM_L6
from tuner.bench.cli import main
from tuner.bench.packing import aggregate, level_row, most_overlapping, trial_config
from tuner.bench.packing_tune import check_via, cpus_per_trial, trial_figures
from tuner.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SAMPLES = 256
LEVELS = (1, 2)

# --- pure parts ----------------------------------------------------------------------------------


def _metrics(**over: object) -> dict:
    """A trial's last Tune result as run_trial reports it (one evaluation, completed)."""
    return {"trial_id": "a_00000", "status": "completed", "epoch": 1.0, "step": 8,
            "train_samples_per_s": 128.0, "wall_s": 3.0, "trained_at": 1000.0,
            "dev_score": 0.8, "best_dev_score": 0.8, **over}  # fmt: skip


def test_trial_figures_date_the_training_and_count_one_epoch():
    figures = trial_figures(_metrics(), rows=256, tokens=4000)
    assert figures is not None
    assert (figures["samples"], figures["tokens"]) == (256, 4000)
    assert figures["train_s"] == pytest.approx(2.0)  # 256 samples at 128/s
    assert figures["start"] == pytest.approx(997.0)  # trained_at - wall_s: fit began there
    assert figures["dev_score"] == 0.8 and figures["peak_mem_mib"] is None  # CPU: no peak


@pytest.mark.parametrize(
    "over",
    [{"status": "oom"}, {"status": "running"}, {"train_samples_per_s": 0.0}, {"status": None}],
)
def test_trials_that_did_not_complete_give_no_figures(over):
    assert trial_figures(_metrics(**over), rows=256, tokens=4000) is None


def test_level_row_keeps_the_process_mode_keys_and_adds_the_tune_figures():
    trials = [{"start": 10.0, "train_s": 2.0, "samples": 100, "tokens": 1000, "dev_score": 0.8},
              {"start": 11.0, "train_s": 3.0, "samples": 100, "tokens": 1000, "dev_score": 0.8}]  # fmt: skip
    row = level_row(3, trials, shape=MINILM_L6, peak_flops=None, mps=False, via="tune",
                    wall_s=20.0, running_at_once=3)  # fmt: skip
    assert row.aggregate_samples_per_s == pytest.approx(aggregate(trials)[0]) == 50.0
    assert (row.failed, row.overlap, row.running_at_once, row.via) == (1, 2, 3, "tune")
    assert row.wall_samples_per_s == pytest.approx(10.0)
    old = {"concurrent", "gpus_per_trial", "aggregate_samples_per_s", "trial_samples_per_s",
           "speedup", "mfu", "peak_mem_mib", "dev_score", "failed", "mps"}  # fmt: skip
    assert old <= set(row.to_dict())


def test_most_overlapping_counts_trials_training_at_one_moment():
    def t(start: float, length: float) -> dict:
        return {"start": start, "train_s": length}

    assert most_overlapping([]) == 0
    assert most_overlapping([t(0, 1), t(1, 1), t(2, 1)]) == 1  # end to end: never together
    assert most_overlapping([t(0, 5), t(1, 1), t(3, 1), t(4, 2)]) == 2


def test_every_trial_of_a_level_gets_a_cpu_share_that_fits():
    assert cpus_per_trial(2, 16.0) == 1.0
    assert cpus_per_trial(16, 16.0) == 1.0
    assert cpus_per_trial(16, 8.0) * 16 <= 8.0


def test_via_is_checked_and_tune_refuses_to_join_a_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert check_via("tune") == "tune" and check_via("processes") == "processes"
    with pytest.raises(ConfigError, match="'nonsense'"):
        check_via("nonsense")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    with pytest.raises(ConfigError, match="RAY_ADDRESS"):
        check_via("tune")
    assert check_via("processes") == "processes"  # the processes never use Ray


def test_bad_via_exits_2_with_one_line_before_anything_starts(tmp_path, capfd):
    out = tmp_path / "out"
    assert run_cli(main, ["--suite", "packing", "--via", "nonsense", "--out", str(out)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "'nonsense'" in err, err
    assert not (out / "bench-packing.json").exists()  # refused before the data were prepared


def test_the_tune_trial_is_the_process_trial():
    config = trial_config(batch_size=32, lr=1e-3)
    assert config == {"method": "lora", "rank": 8, "epochs": 1.0, "batch_size": 32, "lr": 1e-3,
                      "seed": 0, "evals": 1}  # fmt: skip


# --- end to end: a real local Ray on CPU -------------------------------------------------------


@pytest.fixture(scope="module")
def tune_bench(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("packing_tune")
    ray_tmp = Path(tempfile.mkdtemp(prefix="pt-", dir="/tmp"))  # Ray's socket paths stay short
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"PEFT_TUNE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
                "PEFT_TUNE_CACHE_DIR": str(tmp / "tokens"), "RAY_TMPDIR": str(ray_tmp)})  # fmt: skip
    argv = ["--suite", "packing", "--via", "tune", "--device", "cpu", "--backbone", "tiny-bert",
            "--train-samples", str(TRAIN_SAMPLES), "--levels", ",".join(map(str, LEVELS)),
            "--max-length", "32", "--out", str(tmp / "out")]  # fmt: skip
    try:
        proc = subprocess.run([sys.executable, "-m", "tuner.bench", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        deadline = time.monotonic() + 60  # Ray's daemons exit after the driver's shutdown
        while processes_using([ray_tmp]) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = processes_using([ray_tmp])
        end_processes(left)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp / "out", proc, left


@pytest.mark.slow
def test_each_level_is_one_tune_run_of_n_concurrent_trials(tune_bench):
    out, proc, left = tune_bench
    doc = json.loads((out / "bench-packing.json").read_text())
    rows = {r["concurrent"]: r for r in doc["rows"]}
    assert sorted(rows) == list(LEVELS), proc.stderr[-2000:]
    assert doc["summary"]["train"] == TRAIN_SAMPLES and doc["summary"]["via"] == "tune"
    # train, dev and test encoded once each on the driver (or read from the token cache)
    summary = doc["summary"]
    assert summary["tokenisations"] + summary["tokenisation_cache_hits"] == 3
    for n, row in rows.items():
        assert (row["via"], row["failed"], row["mps"]) == ("tune", 0, False)
        assert row["gpus_per_trial"] == pytest.approx(1 / n)
        # never more than the level; all n at once is timing: a 256-row tiny-bert trial can end
        # before a 2-core host starts the next (on the H100 it was n at every level, 1..16)
        assert 1 <= row["running_at_once"] <= n
        assert row["aggregate_samples_per_s"] > 0 and row["trial_samples_per_s"] > 0
        assert row["wall_s"] > 0 and row["wall_samples_per_s"] > 0
        trials = row["trials"]
        assert len(trials) == n and len({t["trial_id"] for t in trials}) == n
        assert sum(t["samples"] for t in trials) == n * TRAIN_SAMPLES  # one epoch each
        assert {t["steps"] for t in trials} == {TRAIN_SAMPLES // 32}  # batch 32: 8 steps
        assert len({t["dev_score"] for t in trials}) == 1  # same seed, same data: same result
        assert row["dev_score"] == trials[0]["dev_score"]
        # the window runs from the first training start to the last end; the Tune run holds it
        window = max(t["start"] + t["train_s"] for t in trials) - min(t["start"] for t in trials)
        assert row["aggregate_samples_per_s"] == pytest.approx(n * TRAIN_SAMPLES / window)
        assert window < row["wall_s"]
    assert rows[1]["dev_score"] == rows[2]["dev_score"]  # packing does not change results
    assert rows[1]["speedup"] == 1.0
    assert doc["summary"]["tune_wall_s"].keys() == {"1", "2"}
    assert not left, f"Ray processes outlived the bench: {[p.pid for p in left]}"


@pytest.mark.slow
def test_the_markdown_keeps_the_packing_table(tune_bench):
    out, proc, _ = tune_bench
    md = (out / "bench-packing.md").read_text()
    assert "| trials | gpus/trial | MPS | aggregate samples/s |" in md
    assert "| 1 | 1 | False |" in md and "| 2 | 0.5 | False |" in md
    assert "- via: tune" in md and "- tune_wall_s:" in md
    assert md in proc.stdout  # printed at the end as well
