"""Both loaders on one study written twice, by the real MLflow logger and as Ray Tune's folder
layout; the report CLI on it; bad input exits 2 with one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis import sections
from analysis.hypotheses import BY_EXPERIMENT
from analysis.report import build, main
from analysis.synthetic import trial
from analysis.trials import Study, load_mlflow, load_tune_folder, make_study
from search_spaces.errors import ConfigError
from tuner.cli import run_cli
from tuner.experiments import all_experiments, get_experiment
from tuner.launch import parent_run
from tuner.provenance import git_commit
from tuner.tracking import MlflowLogger, ensure_experiment

EXPERIMENT = "e2_few_shot"
PRESET = "smoke"
RAY_KEYS = {"timestamp": 1795363528, "done": False, "time_this_iter_s": 0.5, "pid": 1,
            "hostname": "vm", "checkpoint_dir_name": "checkpoint_000000", "should_checkpoint": True}  # fmt: skip

# trial id -> (method, Tune's final state, dev score per evaluation, how it ends)
TRIALS = {
    "aa000001": ("lora", "TERMINATED", [0.60, 0.70], "completed"),
    "aa000002": ("lora_fusion", "TERMINATED", [0.65, 0.74], "completed"),
    "aa000003": ("fusion", "TERMINATED", [0.90], "stopped"),  # high, but stopped after one of two
    "aa000004": ("lora", "ERROR", [0.55], "failed"),
    "aa000005": ("lora_fusion", "TERMINATED", [0.50], "oom"),
    "aa000006": ("fusion", "RUNNING", [0.52], "running"),
}


def config(method: str) -> dict:
    fused = method != "lora"
    return {"method": method, "rank": None if method == "fusion" else 4, "alpha": 8.0,
            "placement": "attn_qv", "fusion": "dynamic" if fused else None,
            "sources": ["imdb", "newsgroups/bydate"] if fused else None,
            "fusion_layers": [1] if fused else None, "bottleneck": 8 if fused else None,
            "budget_params": 4000, "tolerance": 0.05, "accounting": "trainable",
            "trainable_params": 3906, "added_params": 5000, "budget_deviation": -0.0235,
            "lr": 5.5e-4, "seed": 0, "train_samples": 64, "task": "glue/sst2",
            "backbone": "tiny-bert", "head": "mean", "epochs": 1.0, "evals": 2, "batch_size": 32,
            "max_length": 64}  # fmt: skip


def results(trial_id: str) -> list[dict]:
    method, _, curve, end = TRIALS[trial_id]
    out = []
    for i, dev in enumerate(curve, start=1):
        r = {"trainable_params": 3906, "added_params": 5000, "evaluation": i, "fidelity": i / 2,
             "step": 4 * i, "dev_score": dev, "dev_accuracy": dev, "train_loss": 0.7 - 0.1 * i,
             "train_samples_per_s": 1000.0 + i, "wall_s": 0.25 * i, "status": "running",
             "best_dev_score": max(curve[:i]), "time_to_best_s": 0.25 * i}  # fmt: skip
        if i == 2:
            r.update(status="completed", test_score=dev - 0.01, test_accuracy=dev - 0.01,
                     latency_ms=1.5, **({"latency_merged_ms": 1.1} if method == "lora" else {}))  # fmt: skip
        out.append({**r, **RAY_KEYS, "training_iteration": i, "trial_id": trial_id,
                    "config": config(method)})  # fmt: skip
    if end == "oom":  # as trainables.recipe reports it: the last metrics again, status oom
        out.append({**out[-1], "status": "oom", "peak_mem_mib": 9000.0, "training_iteration": 2})
    return out


def write_mlflow(uri: str) -> None:
    """The study as the driver logs it: launch's parent run, the Tune callback's child runs."""
    from mlflow.tracking import MlflowClient

    exp = get_experiment(EXPERIMENT).with_preset(PRESET)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = ensure_experiment(client, exp.name)
    parent = parent_run(client, experiment_id, exp, PRESET, None, resume=False)
    tags = {"experiment": exp.name, "preset": PRESET, "git_commit": git_commit(), "task": exp.task}
    logger = MlflowLogger(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent,
                          tags=tags)  # fmt: skip
    logger.setup()
    for trial_id, (method, _, _, end) in TRIALS.items():
        trial = SimpleNamespace(trial_id=trial_id, config=config(method), last_result=None,
                                checkpoint=None)  # fmt: skip
        logger.on_trial_start(0, [], trial)
        for result in results(trial_id):
            trial.last_result = result
            logger.on_trial_result(0, [], trial, result)
        if end == "failed":
            logger.on_trial_error(0, [], trial)
        elif end != "running":
            logger.on_trial_complete(0, [], trial)


def write_tune_folder(storage: Path) -> Path:
    """The same study as Ray Tune leaves it on disk."""
    exp = get_experiment(EXPERIMENT).with_preset(PRESET)
    folder = storage / f"{EXPERIMENT}-{PRESET}"
    folder.mkdir(parents=True)
    (folder / "experiment.json").write_text(
        json.dumps({"experiment": exp.to_dict(), "preset": PRESET})
    )
    states = []
    for n, (trial_id, (method, state, _, _)) in enumerate(TRIALS.items()):
        trial_dir = (
            folder
            / f"tune_trial_{trial_id}_{n}_accounting=trainable,method={method}_2026-11-22_16-05-14"
        )
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(json.dumps(config(method), indent=2))
        lines = [json.dumps(r) for r in results(trial_id)]
        (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
        if state == "ERROR":
            (trial_dir / "error.txt").write_text("Traceback ...\nRuntimeError: boom\n")
        states.append([json.dumps({"trial_id": trial_id, "status": state}), "{}"])
    state_file = folder / "experiment_state-2026-11-22_16-05-14.json"
    state_file.write_text(json.dumps({"trial_data": states, "runner_data": {}}))
    return folder


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    write_mlflow(uri)
    return SimpleNamespace(
        uri=uri, storage=root / "results", folder=write_tune_folder(root / "results")
    )


def test_both_loaders_give_the_same_study(stores):
    a = load_mlflow(stores.uri, EXPERIMENT)
    b = load_tune_folder(stores.folder)
    pd.testing.assert_frame_equal(a.trials, b.trials)
    pd.testing.assert_frame_equal(a.history, b.history)
    assert a.completeness == b.completeness
    assert a.plan["search"]["configs"] == b.plan["search"]["configs"]


def test_statuses_fidelity_and_final_metrics(stores):
    study = load_tune_folder(stores.folder)
    t = study.trials.set_index("trial_id")
    assert t["status"].to_dict() == {tid: end for tid, (_, _, _, end) in TRIALS.items()}
    assert t.loc["aa000003", "fidelity"] == 0.5 and t.loc["aa000001", "fidelity"] == 1.0
    assert t.loc["aa000001", "test_score"] == pytest.approx(0.69)
    assert t.loc["aa000002", "sources"] == "imdb,newsgroups/bydate"  # as MLflow stores a list
    assert t.loc["aa000001", "lr"] == 5.5e-4 and t.loc["aa000001", "seed"] == 0
    assert "timestamp" not in t.columns and "config" not in t.columns
    assert len(study.history) == sum(len(c) for _, _, c, _ in TRIALS.values())
    c = study.completeness
    assert dict(c.status_counts) == {
        "completed": 2,
        "stopped": 1,
        "running": 1,
        "failed": 1,
        "oom": 1,
    }
    assert c.missing_arms == ("method=fusion train_samples=64",)


def test_report_cli_writes_markdown_and_figures(stores, tmp_path, capsys):
    out_tune, out_mlflow = tmp_path / "tune", tmp_path / "mlflow"
    assert (
        run_cli(main, [EXPERIMENT, "--results", str(stores.storage), "--out", str(out_tune)]) == 0
    )
    assert run_cli(main, [EXPERIMENT, "--tracking-uri", stores.uri, "--out", str(out_mlflow)]) == 0
    report = (out_tune / "report.md").read_text()
    head = report.split("## ")[0]
    assert "Partial study" in head and "aa000003" in head
    # a trial ASHA stopped is counted once, by design, not as missing data
    assert "1 stopped early by ASHA, by design" in head and "stopped trial(s)" not in head
    assert head.count("aa000003") == 1 and "<details>" in head
    assert "**Setup:** task " in head and "**Result:** best on dev: " in head
    assert "## Per method" in report
    assert "method=fusion train_samples=64" in head
    assert "| H2-few-shot | insufficient evidence |" in report
    for name in ("pareto.png", "e2_few_shot.png"):
        assert (out_tune / name).stat().st_size > 1000
    assert not (out_tune / "pareto_optuna.png").exists()  # one Pareto picture, not two
    # the report and its figures, back on the study's MLflow parent run (the UI shows them there)
    client = MlflowClient(stores.uri)
    (parent,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                   "tags.role = 'study'")  # fmt: skip
    attached = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/pareto.png", "report/e2_few_shot.png"} <= attached
    same = [line for line in (out_mlflow / "report.md").read_text().splitlines()
            if not line.startswith("Source:")]  # fmt: skip
    assert same == [line for line in report.splitlines() if not line.startswith("Source:")]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["e9_nope", "--results", "."], "experiment='e9_nope' is not one of"),
        ([EXPERIMENT, "--results", "/nonexistent/results"], "is not a folder"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_unknown_mlflow_experiment_exits_2(stores, tmp_path, capsys):
    assert run_cli(main, ["e4_budget", "--tracking-uri", stores.uri, "--out", str(tmp_path)]) == 2
    assert "no MLflow experiment 'e4_budget'" in capsys.readouterr().err


def test_an_explicit_parent_run_and_a_wrong_one(stores):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=stores.uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment_id], "tags.role = 'study'")
    study = load_mlflow(stores.uri, EXPERIMENT, parent.info.run_id)
    assert len(study.trials) == len(TRIALS)
    with pytest.raises(ConfigError, match="parent_run_id='nope'"):
        load_mlflow(stores.uri, EXPERIMENT, "nope")


def synthetic_study(name: str) -> Study:
    """Three methods x three seeds, with every figure some section reads."""
    records = []
    for s in range(3):
        for i, method in enumerate(("lora", "fusion", "lora_fusion")):
            score = 0.70 + 0.01 * i + 0.002 * s
            params = {"method": method, "seed": s, "task": "glue/sst2", "train_samples": 128,
                      "rank": 4, "budget_params": 4000, "tolerance": 0.05,
                      "budget_deviation": 0.01, "trainable_params": 3900 + i}  # fmt: skip
            final = {"shift_sentences/mr_score": score - 0.1, "latency_ms": 1.0,
                     "train_samples_per_s": 100.0}  # fmt: skip
            records.append(trial(f"{method}{s}", params=params, dev=score, test=score, final=final))
    return make_study(name, records, get_experiment(name).to_dict(), "synthetic")


@pytest.mark.parametrize("name", [e.name for e in all_experiments()])
def test_every_experiment_has_a_section_and_its_hypotheses(name, tmp_path):
    assert name in sections.SECTIONS
    report = build(synthetic_study(name), tmp_path)
    assert report.startswith(f"# {name}\n") and (tmp_path / "pareto.png").exists()
    if name[0] == "e" and name[1].isdigit():
        assert "## E" + name[1] in report
    else:  # the studies of docs/STUDIES.md: their own section heading
        heading = sections.SECTIONS[name](synthetic_study(name), tmp_path, "test_score")[0]
        assert heading.startswith("## ") and heading in report
    for hypothesis in BY_EXPERIMENT.get(name, ()):
        assert f"| {hypothesis} | " in report
    if name == "e4_budget":
        assert (tmp_path / "e4_heatmap.png").stat().st_size > 1000


def test_a_store_that_cannot_take_the_report_costs_one_line_not_the_report(stores, tmp_path):
    from analysis.publish import attach_report

    study = load_mlflow(stores.uri, EXPERIMENT)
    (tmp_path / "report.md").write_text("# r\n")
    assert attach_report(study, tmp_path) == []  # the real parent takes it
    gone = dataclasses.replace(study, mlflow_runs=((stores.uri, "0" * 32),))
    (problem,) = attach_report(gone, tmp_path)
    assert problem.startswith(f"report not attached to MLflow run {'0' * 32} at {stores.uri}: ")
