"""``python -m tuner.train``: one configuration in-process, and ``--fuse`` sweeps trained as one
fused model; bad input exits 2 naming the value."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from trainables.checkpoint_files import LOOP_STATE
from trainables.train_config import TrainConfig
from tuner.cli import run_cli
from tuner.train import main

TRAIN_KEYS = TrainConfig.__dataclass_fields__
WORDS = ["good", "bad", "fine", "awful", "great", "poor"]


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_task")
    rows = [{"text": f"{WORDS[i % 6]} film number {i}", "label": int(i % 6 in (0, 2, 4))}
            for i in range(200)]  # fmt: skip
    pd.DataFrame(rows[:160]).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(rows[160:]).to_csv(folder / "validation.csv", index=False)
    return folder


def _argv(task: Path, *extra: str) -> list[str]:
    return ["--task", str(task), "--method", "lora", "--backbone", "tiny-bert", "--epochs", "2",
            "--set", "evals=2", "--set", "max_length=16", "--json", *extra]  # fmt: skip


def test_one_configuration_prints_its_final_metrics(tiny_task, capsys):
    assert main(_argv(tiny_task)) == 0
    final = json.loads(capsys.readouterr().out)
    assert final["status"] == "completed" and 0 <= final["test_score"] <= 1


def test_fuse_trains_one_trial_per_value_as_one_model(tiny_task, capsys):
    assert main(_argv(tiny_task, "--fuse", "lr=1e-3,3e-3,1e-2")) == 0
    captured = capsys.readouterr()
    finals = json.loads(captured.out)
    assert [f["status"] for f in finals] == ["completed"] * 3
    assert len({f["trainable_params"] for f in finals}) == 1  # the same LoRA, three rates
    for final in finals:
        assert 0 <= final["dev_score"] <= 1 and 0 <= final["test_score"] <= 1
        assert final["latency_ms"] > 0 and final["train_samples_per_s"] > 0
    assert "lr=3e-3: " in captured.err  # a line per trial
    ranks = json.loads(_run(tiny_task, capsys, "--fuse", "rank=2,8"))
    assert ranks[0]["trainable_params"] < ranks[1]["trainable_params"]
    # placements: rows of a template with LoRA on every linear, each trial counted as its own
    placed = json.loads(_run(tiny_task, capsys, "--fuse", "placement=attn_qv,all"))
    assert [f["status"] for f in placed] == ["completed"] * 2
    assert placed[0]["trainable_params"] < placed[1]["trainable_params"]


def test_fuse_sweeps_a_bottleneck_adapter_as_rows(tiny_task, capsys):
    argv = [a if a != "lora" else "pfeiffer" for a in _argv(tiny_task, "--fuse", "bottleneck=4,8")]
    assert main(argv) == 0
    finals = json.loads(capsys.readouterr().out)
    assert [f["status"] for f in finals] == ["completed"] * 2
    assert finals[0]["trainable_params"] < finals[1]["trainable_params"]  # padded into one model


def test_a_study_trial_runs_alone_from_its_folder(tiny_task, tmp_path, capsys):
    """--trial FOLDER: the configuration Tune saved for a study's trial (accounting keys and all)
    trains as those knobs given by hand do; options given beside it override it."""
    knobs = {"rank": 4, "lr": 2e-3, "placement": "ffn"}
    config = {"task": str(tiny_task), "method": "lora", "backbone": "tiny-bert", "head": "mean",
              "epochs": 2.0, "evals": 2, "max_length": 16, "budget_params": 4000,
              "budget_deviation": 0.01, "tolerance": 0.05, "accounting": "trainable",
              "trainable_params": 4040, "added_params": 4038, "train_samples": None, **knobs}  # fmt: skip
    folder = tmp_path / "e4_budget-smoke" / "trial_ab12cd34"
    folder.mkdir(parents=True)
    reports = [{"evaluation": k, "dev_score": 0.5, "config": config} for k in (1, 2)]
    (folder / "result.json").write_text("\n".join(json.dumps(r) for r in reports))
    by_hand = json.loads(_run(tiny_task, capsys, "--set", *(f"{k}={v}" for k, v in knobs.items())))
    assert main(["--trial", str(folder), "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    for key in ("trainable_params", "dev_score", "test_score"):
        assert alone[key] == by_hand[key], key
    assert main(["--trial", str(folder), "--set", "rank=8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] > alone["trainable_params"]


def test_a_trial_from_before_a_recipe_knob_runs_as_it_trained(tiny_task, tmp_path, capsys):
    """A trial whose checkpoint's recipe predates head_lr_scale and head_lr_max (commits 8752f3f,
    613121d: TrainConfig.to_dict() had neither) runs with the values it trained with, said in a
    line per knob; --set still overrides them."""
    config = {"task": str(tiny_task), "method": "lora", "backbone": "tiny-bert", "head": "mean",
              "epochs": 2.0, "evals": 2, "max_length": 16, "rank": 4, "lr": 2e-3}  # fmt: skip
    folder = tmp_path / "e4_budget-smoke" / "trial_0ld0ld00"
    (folder / "checkpoint_000001").mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"evaluation": 2, "config": config}))
    recipe = TrainConfig.from_dict({k: v for k, v in config.items() if k in TRAIN_KEYS}).to_dict()
    old = {k: v for k, v in recipe.items() if k not in ("head_lr_scale", "head_lr_max")}
    torch.save({"config": old}, folder / "checkpoint_000001" / LOOP_STATE)
    (folder / "checkpoint_000002").mkdir()  # the last one's write cut short: the one before tells
    (folder / "checkpoint_000002" / LOOP_STATE).write_bytes(b"PK\x03\x04 cut short")
    assert main(["--trial", str(folder), "--json"]) == 0
    captured = capsys.readouterr()
    assert (
        "predates head_lr_scale" in captured.err
        and "head_lr_scale=1.0 as it trained" in captured.err
    )
    assert "predates head_lr_max" in captured.err
    replayed = json.loads(captured.out)
    by_hand = json.loads(_run(tiny_task, capsys, "--set", "rank=4", "lr=2e-3", "head_lr_scale=1",
                              "head_lr_max=1"))  # fmt: skip
    now = json.loads(_run(tiny_task, capsys, "--set", "rank=4", "lr=2e-3"))
    assert replayed["dev_loss"] == by_hand["dev_loss"] != now["dev_loss"]
    assert main(["--trial", str(folder), "--set", "head_lr_scale=10", "head_lr_max=0.05",
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["dev_loss"] == now["dev_loss"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--method", "lora"], "--task is needed"), (["--trial", "nowhere"], "'nowhere'"),
     (["--task", "glue/sst2", "--method", "lora", "--train-samples", "0"], "train_samples=0"),
     (["--task", "glue/sst2", "--method", "lora", "--set", "train_samples=1e3"], "'1e3'")],
)  # fmt: skip
def test_a_run_without_its_configuration_exits_2(argv, needle, capfd):
    assert run_cli(main, argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def _run(task: Path, capsys, *extra: str) -> str:
    assert main(_argv(task, *extra)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--fuse", "lr=1e-3"], "two values or more"),
        (["--fuse", "lr"], "KEY=V1,V2"),
        (["--method", "unipelt", "--fuse", "lr=1e-3,2e-3"], "method='unipelt'"),
        (["--fuse", "batch_size=16,32"], "batch_size"),
    ],
)
def test_bad_fuse_exits_2_naming_the_value(tiny_task, capsys, extra, named):
    assert run_cli(main, _argv(tiny_task, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert named in err[-1]


def test_a_fusion_of_the_target_task_itself_exits_2_before_any_data(capsys):
    # refused before the data folder is read
    argv = ["--task", "imdb", "--method", "fusion", "--set", "sources=glue/sst2,imdb",
            "--data-dir", "/nonexistent"]  # fmt: skip
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "source 'imdb' is the study's own task" in err[0]
    assert "--set sources=glue/sst2," in err[0]


def test_a_max_length_past_the_backbones_positions_exits_2_before_any_data(capsys):
    argv = ["--task", "glue/sst2", "--method", "lora", "--backbone", "tiny-bert",
            "--set", "max_length=129", "--data-dir", "/nonexistent"]  # fmt: skip
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: max_length=129 exceeds tiny-bert's 128 positions: choose max_length <= 128"
    ]


def test_a_run_at_the_majority_class_says_it_did_not_learn(capsys):
    from tuner.train import flag_unlearned

    at_majority = {"status": "completed", "dev_score": 0.5092, "dev_majority_score": 0.5092}
    flag_unlearned(at_majority, "lr=0.015: ")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        "lr=0.015: did not learn: dev_score=0.5092, dev_majority_score=0.5092"
    )
    under_probe = {**at_majority, "dev_score": 0.70, "dev_probe_score": 0.80}
    flag_unlearned(under_probe, "")
    assert "below the head-only probe: dev_score=0.7000" in capsys.readouterr().err
    for quiet in ({**at_majority, "dev_score": 0.86}, {**at_majority, "status": "oom"}):
        flag_unlearned(quiet, "")  # learned, or not a finished run: nothing to say
        assert capsys.readouterr().err == ""
