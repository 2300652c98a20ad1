"""Pure pieces of the tuner: the searcher's trial states, trial statuses, --set routing."""

import pytest
from optuna.trial import TrialState

from search_spaces.errors import ConfigError
from tuner.experiments import get_experiment
from tuner.overrides import apply_sets, parse_sets
from tuner.searcher import trial_state
from tuner.tracking import numeric_metrics, run_name, trial_status


@pytest.mark.parametrize(
    ("result", "error", "state"),
    [
        ({"fidelity": 1.0, "dev_score": 0.9}, False, TrialState.COMPLETE),
        ({"fidelity": 0.5, "dev_score": 0.95}, False, TrialState.PRUNED),  # ASHA stopped it
        ({"fidelity": 1.0, "status": "oom"}, False, TrialState.FAIL),
        ({"fidelity": 1.0}, True, TrialState.FAIL),
        (None, False, TrialState.FAIL),
    ],
)
def test_stopped_trials_are_never_told_complete(result, error, state):
    assert trial_state(result, error=error) == state


def test_trial_status_names_every_ending():
    assert trial_status({"fidelity": 1.0}, error=False) == "completed"
    assert trial_status({"fidelity": 0.25}, error=False) == "stopped"
    assert trial_status({"status": "oom", "fidelity": 0.5}, error=False) == "oom"
    assert trial_status({"fidelity": 1.0}, error=True) == "failed"


def test_numeric_metrics_drop_bookkeeping_and_non_numbers():
    out = numeric_metrics({"dev_score": 0.5, "status": "running", "done": True,
                           "training_iteration": 3, "nan": float("nan"), "n": 7})  # fmt: skip
    assert out == {"dev_score": 0.5, "n": 7.0}


def test_run_name_reads_well_in_the_compare_view():
    config = {"method": "lora_fusion", "rank": 6, "fusion": "dynamic", "fusion_layers": "5"}
    assert run_name(config, "abc_1234567") == "lora_fusion r6 dyn@5 12345"


def test_sets_route_to_search_train_method_and_experiment():
    exp = get_experiment("e4_budget")
    out = apply_sets(exp, parse_sets(["budget_params=400000", "lr=1e-3", "rank=4",
                                      "num_samples=3", "evals=2"]))  # fmt: skip
    assert out.search.budget_params == 400_000
    assert out.search.fixed["rank"] == 4
    assert out.train["lr"] == 1e-3 and out.train["evals"] == 2
    assert out.num_samples == 3


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("rank", "not key=value"),
        ("=3", "not key=value"),
        ("bogus=1", "'bogus' is unknown"),
        ("rank=abc", "rank='abc' is not a valid int"),
        ("tolerance=1.5", "tolerance=1.5 must be in (0, 1)"),
        ("fault=boom@2", "fault='boom@2'"),
        ("evals=0", "evals=0"),
        ("scheduler=hyperband", "scheduler='hyperband' is not one of: asha, fifo"),
    ],
)
def test_bad_sets_are_refused_with_the_value(item, needle):
    with pytest.raises(ConfigError, match=None) as err:
        apply_sets(get_experiment("e4_budget"), parse_sets([item]))
    assert needle in str(err.value)


def test_gpus_per_trial_default_comes_from_the_cluster_not_the_driver():
    from tuner.study import Resources

    assert Resources.auto(None, None, cluster_gpus=4.0).gpus_per_trial == 0.125  # CPU head
    assert Resources.auto(None, None, cluster_gpus=0.0).gpus_per_trial == 0.0
    assert Resources.auto(2.0, 0.5, cluster_gpus=4.0) == Resources(2.0, 0.5)


def test_fifo_switches_early_stopping_off():
    from tuner.runner import build_scheduler

    exp = get_experiment("e4_budget")
    assert build_scheduler(apply_sets(exp, {"scheduler": "fifo"}), max_t=3) is None
    assert type(build_scheduler(exp, max_t=3)).__name__ == "AsyncHyperBandScheduler"


def test_a_sqlite_store_keeps_its_artifacts_beside_the_database(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tuner.tracking import ensure_experiment

    monkeypatch.chdir(tmp_path)  # MLflow's default would be ./mlruns here
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    experiment = client.get_experiment(ensure_experiment(client, "e"))
    assert experiment.artifact_location == (tmp_path / "store" / "mlartifacts").as_uri()
    run = client.create_run(experiment.experiment_id)
    (tmp_path / "w.txt").write_text("weights")
    client.log_artifact(run.info.run_id, str(tmp_path / "w.txt"))
    assert list((tmp_path / "store" / "mlartifacts").rglob("w.txt"))
    assert not (tmp_path / "mlruns").exists()


def test_the_seeds_phase_keeps_a_method_whose_trials_were_all_stopped():
    from tuner.launch import top_per_arm

    def row(method, status, dev):
        return {"config": {"method": method, "lr": dev}, "status": status, "dev_score": dev}

    trials = [row("lora", "stopped", 0.9), row("lora", "completed", 0.6),
              row("full", "stopped", 0.5), row("full", "stopped", 0.55),
              row("houlsby", "failed", 0.99), row("houlsby", "completed", None)]  # fmt: skip
    best = {arm: rows[0] for arm, rows in top_per_arm(trials).items()}
    assert best["lora"]["status"] == "completed" and best["lora"]["dev_score"] == 0.6
    assert best["full"]["dev_score"] == 0.55  # no completed trial: the best stopped one
    assert "houlsby" not in best  # failed or unscored trials never represent a method
    top = top_per_arm(trials, k=2)
    assert [r["dev_score"] for r in top["lora"]] == [0.6, 0.9]  # completed first, then stopped
    assert [r["dev_score"] for r in top["full"]] == [0.55, 0.5]


def test_the_seeds_phase_takes_distinct_configurations():
    """Optuna may sample one configuration twice: the second best is another configuration."""
    from tuner.launch import top_per_arm

    def row(lr, dev, seed=0):
        return {"config": {"method": "lora", "lr": lr, "seed": seed}, "status": "completed",
                "dev_score": dev}  # fmt: skip

    top = top_per_arm([row(1e-3, 0.9), row(1e-3, 0.89, seed=1), row(1e-4, 0.8)], k=2)
    assert [r["config"]["lr"] for r in top["lora"]] == [1e-3, 1e-4]


def test_the_seeds_phase_of_a_grid_runs_each_arms_own_best_rate_on_the_seeds_it_lacks():
    from dataclasses import replace

    from tuner.experiments import get_experiment
    from tuner.launch import seeds_phase

    exp = get_experiment("e2_few_shot")  # grid arms (method, train_samples), seeds 0, 1, 2

    def row(method, k, lr, dev, status="completed"):
        config = {"method": method, "train_samples": k, "lr": lr, "task": exp.task}
        return {"config": config, "status": status, "dev_score": dev}

    trials = [row("lora", 128, 1e-4, 0.70), row("lora", 128, 1e-3, 0.80),
              row("lora", 512, 1e-4, 0.90), row("lora", 512, 1e-3, 0.85),
              row("fusion", 128, 5e-5, 0.60, "stopped"), row("fusion", 128, 5e-4, 0.50, "stopped")]  # fmt: skip
    phase = seeds_phase(exp, {"trials": trials}, name="e2_few_shot-full-seeds")
    runs = sorted(
        (c["method"], c["train_samples"], c["lr"], c["seed"]) for c in phase.space.inner.configs
    )
    assert exp.seeds_top == 2  # each arm's two best rates, each on the seeds it lacks
    assert runs == [("fusion", 128, 5e-5, 0), ("fusion", 128, 5e-5, 1), ("fusion", 128, 5e-5, 2),
                    ("fusion", 128, 5e-4, 0), ("fusion", 128, 5e-4, 1), ("fusion", 128, 5e-4, 2),
                    ("lora", 128, 1e-4, 1), ("lora", 128, 1e-4, 2),  # seed 0 ran in the search
                    ("lora", 128, 1e-3, 1), ("lora", 128, 1e-3, 2),
                    ("lora", 512, 1e-4, 1), ("lora", 512, 1e-4, 2),
                    ("lora", 512, 1e-3, 1), ("lora", 512, 1e-3, 2)]  # fmt: skip
    assert phase.num_samples == len(runs)
    one = seeds_phase(replace(exp, seeds_top=1), {"trials": trials}, name="e2_few_shot-full-seeds")
    assert sorted((c["method"], c["train_samples"], c["lr"], c["seed"])
                  for c in one.space.inner.configs) == [
        ("fusion", 128, 5e-5, 0), ("fusion", 128, 5e-5, 1), ("fusion", 128, 5e-5, 2),
        ("lora", 128, 1e-3, 1), ("lora", 128, 1e-3, 2), ("lora", 512, 1e-4, 1),
        ("lora", 512, 1e-4, 2)]  # fmt: skip


def test_study_files_remove_deletes_only_the_study_folder(tmp_path):
    """What --overwrite runs before a study starts again in its folder."""
    from tuner.study import StudyFiles

    files = StudyFiles(str(tmp_path), "e4_budget-smoke")
    files.write_text("tuner.pkl", "state")
    (tmp_path / "e4_budget-smoke-seeds").mkdir()
    files.remove()
    assert not files.exists("tuner.pkl") and not (tmp_path / "e4_budget-smoke").exists()
    assert (tmp_path / "e4_budget-smoke-seeds").is_dir()  # launch removes that one by its own name
    StudyFiles(str(tmp_path), "never-made").remove()  # nothing there: no error
