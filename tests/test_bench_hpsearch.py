"""tuner.bench --suite hpsearch: the usual way as a baseline for a study's throughput.

The pairing on its own (study trials as Tune writes them, one stopped by ASHA), bad input (exit 2,
one line), then the real thing on CPU: a tiny study (e5_efficiency smoke, 2 trials on the random
tiny BERT) and the same 2 configs through ``Trainer.hyperparameter_search`` on a local Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.bench.cli import main
from tuner.bench.hpsearch import compare, pair_trials, summary
from tuner.bench.hpsearch_baseline import BaselineRun, BaselineTrial
from tuner.bench.search import TrialHistory, load_study
from tuner.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
STUDY = ["e5_efficiency", "--preset", "smoke"]  # grid arms bitfit, lora, pfeiffer; no early stops

# --- pairing -------------------------------------------------------------------------------------


def _history(trial_id: str, config: dict, scores: list[float], evals: int) -> TrialHistory:
    """A study trial as its result.json reads: one report per evaluation, ``fidelity`` k/evals."""
    reports = [{"trial_id": trial_id, "dev_score": s, "fidelity": k / evals, "timestamp": 10 * k,
                "time_total_s": 10.0 * k, "config": config,
                "status": "completed" if k == evals else "running"}
               for k, s in enumerate(scores, start=1)]  # fmt: skip
    return TrialHistory(trial_id, config, reports)


def _baseline(index: int, config: dict, score: float) -> BaselineTrial:
    return BaselineTrial(index, config, "completed", score, 5.0, 0.0, 5.0)


def test_pairing_matches_configs_and_reports_stopped_trials_as_stopped():
    lora, bitfit = {"method": "lora", "lr": 1e-3}, {"method": "bitfit", "lr": 1e-3}
    study = [_history("a", {**lora, "fault": "exit@2"}, [0.5, 0.6], evals=2),
             _history("b", {**bitfit, "__trial_index__": 0}, [0.4], evals=2)]  # fmt: skip
    extra = {"method": "pfeiffer", "lr": 1e-3}
    rows = pair_trials([_baseline(0, lora, 0.62), _baseline(1, bitfit, 0.45),
                        _baseline(2, extra, 0.5)], study)  # fmt: skip
    assert [r.study_trial for r in rows] == ["a", "b", None]  # Tune keys and the fault aside
    assert [r.study_status for r in rows] == ["completed", "stopped", None]
    assert rows[0].dev_diff == pytest.approx(0.02)
    assert rows[1].study_dev_score is None and rows[1].dev_diff is None  # stopped: no final score
    assert compare(rows) == {"paired": 2, "compared": 1, "stopped_in_study": 1,
                             "mean_abs_dev_diff": pytest.approx(0.02),
                             "max_abs_dev_diff": pytest.approx(0.02)}  # fmt: skip


def test_the_same_config_twice_pairs_with_two_study_trials_in_order():
    config = {"method": "lora", "seed": 0}
    study = [_history("a", config, [0.5], evals=1), _history("b", config, [0.7], evals=1)]
    rows = pair_trials([_baseline(0, config, 0.5), _baseline(1, config, 0.7)], study)
    assert [(r.study_trial, r.dev_diff) for r in rows] == [("a", 0.0), ("b", 0.0)]


def test_time_to_near_best_is_against_the_best_of_either_side():
    """The baseline's first near-best trial ends 30 s after its first start; the study's best
    (0.80) sets the target, so the baseline's 0.797 is near it and its 0.70 is not."""
    config = {"method": "lora", "seed": 0}
    trials = [BaselineTrial(0, config, "completed", 0.70, 10.0, 100.0, 110.0),
              BaselineTrial(1, config, "completed", 0.797, 20.0, 105.0, 130.0),
              BaselineTrial(2, config, "failed", None, None, 100.0, 140.0)]  # fmt: skip
    run = BaselineRun(trials, gpus=1, device="cuda", wall_s=40.0, driver_wall_s=50.0, per_gpu=4)
    assert run.time_to(0.80) == pytest.approx(30.0) and run.time_to(0.81) is None
    study = [_history("a", config, [0.6, 0.80], evals=2), _history("b", config, [0.75], evals=1)]
    rows = pair_trials(trials, study)
    doc = summary(run, rows, study, study_name="ours", cpus_per_trial=1.0, mps=True)
    assert (doc["near_best_target"], doc["trials_per_gpu"], doc["mps"]) == (0.80, 4, True)
    assert doc["time_to_near_best_s"] == pytest.approx(30.0)
    assert doc["ours_time_to_near_best_s"] == pytest.approx(20.0)  # trial a, at its 2nd report


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [(["--study", "ours={missing}", "--experiment", "e5_efficiency"], "missing"),
     (["--study", "ours={empty}", "--experiment", "e5_efficiency"], "no trial results"),
     (["--study", "ours={empty}", "--experiment", "nope"], "'nope' is not one of: "),
     (["--study", "ours={empty}", "--experiment", "e5_efficiency", "--gpus", "0.5"], "--gpus 0.5"),
     (["--study", "ours={empty}", "--experiment", "e5_efficiency", "--max-trials", "0"], "--max-trials 0"),
     (["--study", "ours={empty}", "--experiment", "e5_efficiency", "--trials-per-gpu", "0"], "--trials-per-gpu 0"),
     (["--study", "ours={empty}", "--experiment", "e5_efficiency", "--mps"], "--mps both"),
     (["--experiment", "e5_efficiency"], "--study NAME=FOLDER"),
     (["--study", "ours={cut}", "--experiment", "e5_efficiency"], "1 unfinished trial(s)")],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line_naming_it(tmp_path, capsys, args, named):
    (tmp_path / "empty").mkdir()
    (tmp_path / "cut").mkdir()  # Tune's saved state of a study stopped mid-run (H200, 2026-12-04)
    trials = [[json.dumps({"trial_id": t, "status": s}), json.dumps({"last_result": {}})]
              for t, s in (("a", "TERMINATED"), ("b", "RUNNING"))]  # fmt: skip
    (tmp_path / "cut" / "experiment_state-2026-12-04_18-00-00.json").write_text(
        json.dumps({"trial_data": trials})
    )
    folders = {
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty",
        "cut": tmp_path / "cut",
    }
    argv = ["--suite", "hpsearch", "--out", str(tmp_path / "out"),
            *[a.format(**folders) for a in args]]  # fmt: skip
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and named in err


# --- end to end on CPU ---------------------------------------------------------------------------


def _run(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("hpsearch")
    env = {**os.environ, "PEFT_TUNE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           "PEFT_TUNE_ADAPTERS": str(tmp / "adapters"), "PEFT_TUNE_CACHE_DIR": str(tmp / "tokens")}  # fmt: skip
    proc = _run(["tuner.run", *STUDY, "--num-samples", "2", "--cpus-per-trial", "2",
                 "--storage", str(tmp / "results")], env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, env, tmp / "results" / "e5_efficiency-smoke"


@pytest.fixture(scope="module")
def baseline(study):
    tmp, env, folder = study
    proc = _run(["tuner.bench", "--suite", "hpsearch", "--study", f"ours={folder}", "--experiment",
                 *STUDY, "--max-trials", "2", "--device", "cpu", "--cpus-per-trial", "2",
                 "--out", str(tmp / "bench")], env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp / "bench" / "bench-hpsearch.json").read_text()), tmp / "bench", proc


@pytest.mark.slow
def test_the_baseline_runs_the_study_configs_to_the_end_and_pairs_them(study, baseline):
    _, _, folder = study
    doc, out, proc = baseline
    ours = {t.trial_id: t for t in load_study(folder)}
    rows = doc["rows"]
    assert [r["trial_index"] for r in rows] == [0, 1]
    assert {r["study_trial"] for r in rows} == set(ours)  # both study trials, each once
    for row in rows:
        assert row["status"] == "completed" and row["study_status"] == "completed"
        assert 0 <= row["dev_score"] <= 1 and 0 <= row["study_dev_score"] <= 1
        assert row["dev_diff"] == pytest.approx(row["dev_score"] - row["study_dev_score"])
        assert row["wall_s"] > 0
        assert ours[row["study_trial"]].config["method"] in row["config"]
    summary = doc["summary"]
    assert (summary["trials"], summary["completed"], summary["gpus"]) == (2, 2, 1)
    assert summary["paired"] == summary["compared"] == 2 and summary["stopped_in_study"] == 0
    assert 0 <= summary["mean_abs_dev_diff"] <= summary["max_abs_dev_diff"] <= 1
    assert summary["trials_per_gpu_hour"] > 0 and summary["ours_trials_per_gpu_hour"] > 0
    best = max(max(r["dev_score"], r["study_dev_score"]) for r in rows)
    assert summary["near_best_target"] == best and (summary["trials_per_gpu"], summary["mps"]) == (
        1,
        False,
    )
    reached = [summary["time_to_near_best_s"], summary["ours_time_to_near_best_s"]]
    assert any(t is not None and t > 0 for t in reached)  # the side that found the best did
    assert summary["ours_vs_baseline"] == pytest.approx(
        summary["ours_trials_per_gpu_hour"] / summary["trials_per_gpu_hour"]
    )
    assert doc["command"].startswith("python -m tuner.bench --suite hpsearch")
    markdown = (out / "bench-hpsearch.md").read_text()
    assert "| dev (Trainer) |" in markdown and "- ours_vs_baseline: " in markdown
    assert "[bench] hpsearch" in proc.stderr


@pytest.mark.slow
def test_each_trainer_trial_ran_its_study_config_with_as_many_evaluations(study, baseline):
    """Tune's own records of the baseline: the trial's TrainingArguments are its config's, and
    Trainer scored the dev split as often as the study's trial did (the last at the end)."""
    _, _, folder = study
    doc, out, _ = baseline
    ours = {t.trial_id: t for t in load_study(folder)}
    trainer = {
        int(t.config["trial_index"]): t for t in load_study(out / "hpsearch-tune" / "hpsearch-0")
    }
    assert sorted(trainer) == [0, 1]
    for row in doc["rows"]:
        mine, theirs = ours[row["study_trial"]], trainer[row["trial_index"]]
        assert theirs.config["learning_rate"] == mine.config["lr"]
        assert theirs.config["per_device_train_batch_size"] == mine.config["batch_size"]
        assert theirs.config["seed"] == mine.config.get("seed", 0)
        assert len(theirs.reports) == len(mine.reports) == mine.config["evals"]
        assert theirs.reports[-1]["epoch"] == pytest.approx(mine.reports[-1]["epoch"])
        assert theirs.reports[-1]["eval_score"] == row["dev_score"]


@pytest.mark.slow
def test_a_preset_whose_data_differs_from_the_study_is_refused(study, tmp_path, capsys):
    _, _, folder = study
    argv = ["--suite", "hpsearch", "--study", f"ours={folder}", "--experiment", "e5_efficiency",
            "--preset", "full", "--out", str(tmp_path)]  # fmt: skip
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert "backbone='tiny-bert'" in err and "\n" not in err
