"""The fault-injection aid, and a trial's restart from its last checkpoint, without Ray.

``fault=raise@N[:trial=K]`` reaches the chosen trial alone; a trial that fails at evaluation N
and runs again from the checkpoint of N-1 reports N.. to the end, nothing twice, nothing missing,
and ends where an uninterrupted run ends. (``exit@N`` and Tune's restarts: -m slow tests.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from search_spaces.errors import ConfigError
from trainables.faults import Fault, fault_for_trial, parse_fault
from trainables.recipe import run_trial
from tuner.experiments import get_experiment
from tuner.overrides import apply_sets, parse_sets
from tuner.space import build_space


@pytest.mark.parametrize(
    ("spec", "fault"),
    [("raise@2", Fault("raise", 2)), ("exit@1", Fault("exit", 1)),
     ("exit@2:trial=1", Fault("exit", 2, 1)), ("raise@10:trial=0", Fault("raise", 10, 0)),
     (None, None), ("", None)],
)  # fmt: skip
def test_fault_specs_parse(spec, fault):
    assert parse_fault(spec) == fault


@pytest.mark.parametrize(
    "spec", ["boom@2", "exit@0", "exit@", "exit@x", "exit@2:trial=", "exit@2:trial=-1",
             "exit@2:seed=1", "exit@2:trial=1:more", "raise"],
)  # fmt: skip
def test_bad_fault_specs_are_refused_with_the_value(spec):
    with pytest.raises(ConfigError, match="must be raise@N or exit@N"):
        parse_fault(spec)


def test_a_targeted_fault_reaches_its_trial_alone():
    assert [fault_for_trial("exit@2:trial=1", i) for i in range(3)] == [None, "exit@2", None]
    assert [fault_for_trial("raise@3", i) for i in range(3)] == ["raise@3"] * 3
    assert fault_for_trial(None, 0) is None


def test_the_study_space_gives_the_fault_to_trial_k_only():
    exp = apply_sets(get_experiment("e5_efficiency").with_preset("smoke"),
                     parse_sets(["fault=exit@2:trial=1"]))  # fmt: skip
    space = build_space(exp)
    study = optuna.create_study()
    configs = [space(study.ask()) for _ in range(4)]
    assert [c.get("fault") for c in configs] == [None, "exit@2", None, None]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 120-row user folder on the tiny random BERT: a trial takes a second."""
    from trainables.backbones import load_backbone
    from tuner.prepare import prepare

    folder = tmp_path_factory.mktemp("task")
    rows = [f"{'good fine great' if i % 2 else 'bad poor awful'} {i},{i % 2}" for i in range(120)]
    (folder / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    tokenizer = load_backbone("tiny-bert", meta=True).tokenizer
    return prepare(str(folder), tokenizer=tokenizer, max_length=16)


CONFIG = {"method": "lora", "rank": 2, "backbone": "tiny-bert", "batch_size": 8, "max_steps": 12,
          "evals": 4, "lr": 1e-3}  # fmt: skip


def run(config, data, folder: Path, reports: list[dict], *, resume_from: Path | None = None):
    """Run the trial, appending its reports; each evaluation's checkpoint goes to
    ``folder/<evaluation>``."""

    def report(metrics, checkpoint):
        reports.append(dict(metrics))
        shutil.copytree(checkpoint, folder / str(metrics["evaluation"]), dirs_exist_ok=True)

    run_trial(config, data, report=report, resume_from=resume_from, device="cpu")


def test_a_failed_trial_goes_on_from_its_last_checkpoint_as_if_uninterrupted(data, tmp_path):
    whole: list[dict] = []
    run(CONFIG, data, tmp_path / "whole", whole)
    reports: list[dict] = []
    with pytest.raises(RuntimeError, match="injected fault at evaluation 3"):
        run({**CONFIG, "fault": "raise@3"}, data, tmp_path / "first", reports)
    assert [r["evaluation"] for r in reports] == [1, 2]  # 3 failed before it was reported
    run({**CONFIG, "fault": "raise@3"}, data, tmp_path / "second", reports,
        resume_from=tmp_path / "first" / "2")  # a restored attempt never faults  # fmt: skip
    assert [r["evaluation"] for r in reports] == [1, 2, 3, 4]
    assert [r["step"] for r in reports] == [r["step"] for r in whole]
    for resumed, uninterrupted in zip(reports, whole, strict=True):
        assert resumed["dev_score"] == pytest.approx(uninterrupted["dev_score"], abs=1e-6)
        assert resumed["train_loss"] == pytest.approx(uninterrupted["train_loss"], rel=1e-5)


def test_a_trial_reports_where_its_time_went(data, tmp_path):
    """Model build (``setup_s``, every report), the final test/latency work (``final_s``, last
    report), training (``train_s``, of ``wall_s``: the rest is evaluating) and steps replayed
    from CUDA graphs (``graphed_steps``, ``cuda_graph_capture_s``: none on CPU)."""
    reports: list[dict] = []
    run(CONFIG, data, tmp_path / "timed", reports)
    assert all(r["setup_s"] > 0 and r["graphed_steps"] == 0 for r in reports)
    assert all(r["cuda_graph_capture_s"] == 0.0 for r in reports)
    assert all(0 < r["train_s"] < r["wall_s"] for r in reports)
    assert [r["train_s"] for r in reports] == sorted(r["train_s"] for r in reports)
    assert "final_s" not in reports[0] and reports[-1]["final_s"] > 0
    assert reports[-1]["wall_s"] > 0 and reports[-1]["status"] == "completed"
