"""The real thing on CPU: e4_budget --preset smoke on a local Ray cluster, MLflow, source adapters.

One study with an injected fault (every trial that reaches evaluation 2 is killed there once):
trials finish, ASHA stops some early, every trial is inside the budget, restored trials continue
from their checkpoint without repeated or missing evaluations, MLflow has the parent and exactly
one child per trial. A second study (e3_transfer) reuses the source adapters the first trained.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from search_spaces.spaces import learning_rates

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def run(args, env, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "tuner.run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("e2e")
    env = {**os.environ, "PEFT_TUNE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           "PEFT_TUNE_ADAPTERS": str(tmp / "adapters"), "PEFT_TUNE_CACHE_DIR": str(tmp / "tokens")}  # fmt: skip
    log = run(["e4_budget", "--preset", "smoke", "--num-samples", "6", "--storage",
               str(tmp / "results"), "--set", "fault=exit@2"], env)  # fmt: skip
    return tmp, env, log


def trial_results(folder: Path) -> dict[str, list[dict]]:
    return {
        d.name.removeprefix("trial_"): [json.loads(line) for line in (d / "result.json").open()]
        for d in folder.glob("trial_*")
    }


def test_trials_finish_asha_stops_some_and_all_fit_the_budget(study):
    tmp, _, log = study
    summary = json.loads((tmp / "results" / "e4_budget-smoke" / "summary.json").read_text())
    statuses = [t["status"] for t in summary["trials"]]
    assert len(statuses) == 6
    assert set(statuses) <= {"completed", "stopped"}
    assert statuses.count("stopped") >= 1, log
    assert statuses.count("completed") >= 1, log
    for trial in summary["trials"]:
        assert abs(trial["config"]["budget_deviation"]) <= trial["config"]["tolerance"]
    assert "3 to train" in log
    # the seeds phase: the best split of each method on dev (the stratified start-up tried all
    # three) run to the end on the seeds of 0, 1, 2 it lacks (seed 0 where the search completed it)
    seeds = summary["seeds"]["trials"]
    best = {}
    for t in summary["trials"]:
        key = (t["status"] == "completed", t["dev_score"])
        if t["config"]["method"] not in best or key > best[t["config"]["method"]][0]:
            best[t["config"]["method"]] = (key, t)
    wanted = sorted((m, s) for m, ((done, _), _) in best.items() for s in (0, 1, 2)
                    if not (done and s == 0))  # fmt: skip
    assert sorted(best) == ["fusion", "lora", "lora_fusion"]
    assert sorted((t["config"]["method"], t["config"]["seed"]) for t in seeds) == wanted
    for t in seeds:  # the split dev chose, at another seed
        chosen = best[t["config"]["method"]][1]["config"]
        assert {k: v for k, v in t["config"].items() if k != "seed"} == {
            k: v for k, v in chosen.items() if k != "seed"}  # fmt: skip
    assert {t["status"] for t in seeds} == {"completed"}
    # work never done twice: the target's train/dev/test and each trained source's train/dev
    # (a source adapter is scored on dev only) tokenised once (3 + 3 x 2 splits), each source
    # adapter trained once, no trial launched outside the budget
    assert summary["work"] == {
        "tokenisations": 9, "tokenisation_cache_hits": 0, "source_adapters_needed": 3,
        "source_adapters_trained": 3, "trials_launched": 6 + len(seeds), "trials_outside_budget": 0,
    }  # fmt: skip


def test_restored_trials_repeat_and_skip_no_evaluation(study):
    tmp, _, _ = study
    for trial_id, results in trial_results(tmp / "results" / "e4_budget-smoke").items():
        evaluations = [r["evaluation"] for r in results]
        assert evaluations == list(range(1, len(evaluations) + 1)), trial_id
        steps = [r["step"] for r in results]
        assert steps == sorted(set(steps)), trial_id


def test_mlflow_holds_the_parent_and_one_child_per_trial(study):
    tmp, _, _ = study
    client = MlflowClient(f"sqlite:///{tmp / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e4_budget")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    summary = json.loads((tmp / "results" / "e4_budget-smoke" / "summary.json").read_text())
    launched = summary["work"]["trials_launched"]  # the search's 6, then the seeds phase's
    assert len(parents) == 1 and len(children) == launched > 6
    assert len({r.data.tags["trial_id"] for r in children}) == launched
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "dev_score")]
        assert steps == list(range(1, len(steps) + 1))
        assert child.data.params["method"] in ("lora", "fusion", "lora_fusion")
        assert int(child.data.params["trainable_params"]) > 0
    completed = [c for c in children if c.data.tags["status"] == "completed"]
    assert all("test_score" in c.data.metrics for c in completed)


def test_a_second_study_reuses_the_source_adapters(study):
    tmp, env, _ = study
    log = run(["e3_transfer", "--preset", "smoke", "--storage", str(tmp / "results2")], env)
    assert "3 reused, 0 to train" in log
    assert "source_adapters_trained=0" in log
    # fair arms: each method at two rates of its own range, its best on dev re-run on seed 1
    summary = json.loads((tmp / "results2" / "e3_transfer-smoke" / "summary.json").read_text())
    search = [t["config"] for t in summary["trials"]]
    assert sorted((c["method"], c["lr"]) for c in search) == sorted(
        (m, lr) for m in ("lora", "fusion", "lora_fusion") for lr in learning_rates(m, 2)
    )
    best = {}
    for t in summary["trials"]:
        if (
            t["status"] == "completed"
            and t["dev_score"] > best.get(t["config"]["method"], (-1,))[0]
        ):
            best[t["config"]["method"]] = (t["dev_score"], t["config"]["lr"])
    again = {(t["config"]["method"], t["config"]["lr"], t["config"]["seed"])
             for t in summary["seeds"]["trials"]}  # fmt: skip
    assert again == {(m, lr, 1) for m, (_, lr) in best.items()}


def test_the_report_reads_the_real_study(study):
    tmp, env, _ = study
    out = tmp / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", "e4_budget", "--results", str(tmp / "results"),
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    summary = json.loads((tmp / "results" / "e4_budget-smoke" / "summary.json").read_text())
    stopped = [t["trial_id"] for t in summary["trials"] if t["status"] == "stopped"]
    assert "## E4: budget splits" in report and "Pareto" in report
    (h3,) = [line for line in report.splitlines() if line.startswith("| H3 |")]
    assert int(h3.split("|")[5]) >= 3  # pairs: the seeds phase answers H3 from this study alone
    assert all(trial_id in report for trial_id in stopped)  # listed as left out, never scored
    assert (out / "pareto.png").stat().st_size > 0 and (out / "e4_heatmap.png").stat().st_size > 0
    # read from the Tune folder, the report still reaches the study's MLflow parent run
    client = MlflowClient(f"sqlite:///{tmp / 'results' / 'mlflow.db'}")
    parent = (tmp / "results" / "e4_budget-smoke" / "mlflow_parent_run.txt").read_text().strip()
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent, "report")}
