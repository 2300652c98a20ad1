"""Bad input to ``python -m tuner.run`` is refused before anything starts, is created or is logged.

Every case must end with exit code 2 and exactly one line on stderr that names the bad value; no
Ray session (none under the test's own RAY_TMPDIR, ``ray.is_initialized()`` false), no results
folder, no MLflow store. The table runs in-process through the same ``run_cli`` wrapper that
``python -m tuner.run`` exits with, stderr captured at the file-descriptor level, Ray's start
replaced by a tripwire; a few cases also run as real processes (``-m slow``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["--preset", "smoke"]

# (id, argv, the bad value as the one error line must show it); "{tmp}" is the test's folder.
CASES = [
    ("unknown experiment", ["e9_nothing"], "'e9_nothing'"),
    ("unknown preset", ["e4_budget", "--preset", "huge"], "'huge'"),
    ("unknown method", ["e4_budget", *SMOKE, "--set", "method=lorra"], "'lorra'"),
    ("method outside the split", ["e4_budget", *SMOKE, "--set", "method=prefix"], "'prefix'"),
    ("method not in the study", ["e1_single_task", *SMOKE, "--set", "method=full"], "'full'"),
    ("method not in the grid", ["e5_efficiency", *SMOKE, "--set", "method=adalora"], "'adalora'"),
    ("unknown task", ["e4_budget", *SMOKE, "--set", "task=nosuch/task"], "'nosuch/task'"),
    ("unknown backbone", ["e4_budget", *SMOKE, "--set", "backbone=bert-huge"], "'bert-huge'"),
    ("--set without =", ["e4_budget", *SMOKE, "--set", "rank"], "'rank'"),
    ("--set without key", ["e4_budget", *SMOKE, "--set", "=3"], "'=3'"),
    ("unknown --set key", ["e4_budget", *SMOKE, "--set", "colour=red"], "'colour'"),
    ("int expected", ["e4_budget", *SMOKE, "--set", "num_samples=1.5"], "'1.5'"),
    ("float expected", ["e4_budget", *SMOKE, "--set", "lr=fast"], "'fast'"),
    ("bool expected", ["e4_budget", *SMOKE, "--set", "compile=maybe"], "'maybe'"),
    ("budget infeasible", ["e4_budget", *SMOKE, "--set", "budget_params=10"], "budget 10 "),
    ("budget <= 0", ["e4_budget", *SMOKE, "--set", "budget_params=-3"], "budget_params=-3"),
    ("tolerance above 1", ["e4_budget", *SMOKE, "--set", "tolerance=1.5"], "tolerance=1.5"),
    ("tolerance 0", ["e4_budget", *SMOKE, "--set", "tolerance=0"], "tolerance=0.0"),
    ("rank 0", ["e4_budget", *SMOKE, "--set", "rank=0"], "rank=0"),
    ("rank < 0", ["e1_single_task", *SMOKE, "--set", "rank=-2"], "rank=-2"),
    ("bottleneck 0", ["e1_single_task", *SMOKE, "--set", "bottleneck=0"], "bottleneck=0"),
    ("bottleneck < 0", ["e5_efficiency", *SMOKE, "--set", "bottleneck=-1"], "bottleneck=-1"),
    ("knob the allocator sets", ["e4_budget", *SMOKE, "--set", "rank=8"], "rank=8"),
    ("unknown placement", ["e4_budget", *SMOKE, "--set", "placement=everywhere"], "'everywhere'"),
    ("unknown fusion", ["e4_budget", *SMOKE, "--set", "fusion=sideways"], "'sideways'"),
    ("unknown source", ["e4_budget", *SMOKE, "--set", "sources=glue/sst2,nosuch"], "'nosuch'"),
    ("no source", ["e4_budget", *SMOKE, "--set", "sources="], "sources=''"),
    ("source is the task", ["e1_single_task", *SMOKE, "--set", "task=imdb"], "source 'imdb'"),
    (
        "source is the task, set",
        ["e4_budget", *SMOKE, "--set", "sources=tweet_eval/sentiment"],
        "source 'tweet_eval/sentiment'",
    ),
    ("data folder missing", ["e4_budget", *SMOKE, "--data-dir", "{tmp}/gone"], "{tmp}/gone"),
    ("task folder missing", ["e4_budget", *SMOKE, "--set", "task={tmp}/gone"], "{tmp}/gone"),
    ("task folder, wrong columns", ["e4_budget", *SMOKE, "--set", "task={tmp}/cols"], "'foo'"),
    (
        "tracking URI refused",
        ["e4_budget", *SMOKE, "--tracking-uri", "http://127.0.0.1:9"],
        "http://127.0.0.1:9",
    ),  # fmt: skip
    (
        "tracking URI under a file",
        ["e4_budget", *SMOKE, "--tracking-uri", "sqlite:///{tmp}/cols/train.csv/m.db"],
        "train.csv/m.db",
    ),  # fmt: skip
    (
        "tracking URI a bare .db path",
        ["e4_budget", *SMOKE, "--tracking-uri", "{tmp}/mlflow.db"],
        "did you mean sqlite:///{tmp}/mlflow.db?",
    ),  # fmt: skip
    (
        "a bad pair after a good one",
        ["e4_budget", *SMOKE, "--set", "tolerance=0.1", "lr=fast"],
        "'fast'",
    ),  # fmt: skip
    ("--resume, nothing there", ["e4_budget", *SMOKE, "--resume"], "--resume"),
    ("--resume with --overwrite", ["e4_budget", *SMOKE, "--resume", "--overwrite"], "--overwrite"),
    ("fault spec", ["e4_budget", *SMOKE, "--set", "fault=boom@2"], "'boom@2'"),
    ("fault target", ["e4_budget", *SMOKE, "--set", "fault=exit@2:trial=x"], "'exit@2:trial=x'"),
    ("accounting", ["e4_budget", *SMOKE, "--set", "accounting=bytes"], "'bytes'"),
    ("head", ["e4_budget", *SMOKE, "--set", "head=max"], "'max'"),
    ("precision", ["e4_budget", *SMOKE, "--set", "precision=fp64"], "'fp64'"),
    (
        "max_length past the positions",
        ["e4_budget", *SMOKE, "--set", "max_length=256"],
        "max_length=256 exceeds tiny-bert's 128 positions",
    ),
    ("lr <= 0", ["e4_budget", *SMOKE, "--set", "lr=-1"], "lr=-1.0"),
    ("evals 0", ["e4_budget", *SMOKE, "--set", "evals=0"], "evals=0"),
    ("more evals than steps", ["e4_budget", *SMOKE, "--set", "evals=1000"], "evals=1000"),
    ("num_samples 0", ["e4_budget", *SMOKE, "--num-samples", "0"], "--num-samples=0"),
    ("grace_period 0", ["e4_budget", *SMOKE, "--set", "grace_period=0"], "grace_period=0"),
    ("unknown scheduler", ["e4_budget", *SMOKE, "--set", "scheduler=hyperband"], "'hyperband'"),
    (
        "reduction_factor 1",
        ["e4_budget", *SMOKE, "--set", "reduction_factor=1"],
        "reduction_factor=1",
    ),  # fmt: skip
    ("train_samples < 1", ["e4_budget", *SMOKE, "--set", "train_samples=-5"], "train_samples=-5"),
    ("no CPUs per trial", ["e4_budget", *SMOKE, "--cpus-per-trial", "0"], "cpus_per_trial=0"),
    ("GPUs per trial < 0", ["e4_budget", *SMOKE, "--gpus-per-trial", "-1"], "gpus_per_trial=-1"),
]


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The test's folder: a data folder with the wrong columns; nothing else exists yet."""
    (tmp_path / "cols").mkdir()
    (tmp_path / "cols" / "train.csv").write_text("foo,bar\nhello,1\n")
    return tmp_path


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> list[str]:
    """Caches and Ray's temp dir inside the test's folder; starting Ray is recorded and refused."""
    import tuner.runner

    started: list[str] = []

    def connect_ray(**_: object) -> float:
        started.append("connect_ray")
        raise RuntimeError("bad input reached Ray")

    monkeypatch.setattr(tuner.runner, "connect_ray", connect_ray)
    # tuner.run sets Ray's single-machine switch when first imported; keep it out of this process
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    for key, folder in (("RAY_TMPDIR", "ray"), ("PEFT_TUNE_ADAPTERS", "adapters"),
                        ("PEFT_TUNE_CACHE_DIR", "tokens")):  # fmt: skip
        monkeypatch.setenv(key, str(workdir / folder))
    return started


def assert_nothing_started(workdir: Path) -> None:
    created = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    # The token cache may hold the task's tokenised data; nothing else may appear.
    unexpected = [p for p in created if not p.startswith(("cols", "tokens"))]
    assert unexpected == [], unexpected


@pytest.mark.parametrize(("argv", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_starts(
    argv: list[str], needle: str, workdir: Path, tripwire: list[str], capfd, data_dir: Path
) -> None:
    import ray

    from tuner.cli import run_cli
    from tuner.run import main

    argv = [_fill(a, workdir) for a in argv] + ["--storage", str(workdir / "results")]
    code = run_cli(main, argv)
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and _fill(needle, workdir) in lines[0], lines[0]
    assert out == ""
    assert tripwire == [] and not ray.is_initialized()
    assert_nothing_started(workdir)


def test_a_study_already_in_the_folder_is_not_run_again_over_it(
    workdir: Path, tripwire: list[str], capfd, data_dir: Path
) -> None:
    """A second Tune run in the same folder would mix its trials with the first one's."""
    from tuner.cli import run_cli
    from tuner.run import main

    study = workdir / "results" / "e4_budget-smoke"
    study.mkdir(parents=True)
    (study / "tuner.pkl").write_bytes(b"a study started here")
    code = run_cli(main, ["e4_budget", *SMOKE, "--storage", str(workdir / "results")])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--resume continues it, --overwrite" in err[0], err
    assert tripwire == [] and sorted(p.name for p in study.iterdir()) == ["tuner.pkl"]


@pytest.mark.parametrize("missing", ["head_lr_scale", "head_lr_max"])
def test_a_study_from_before_a_recipe_knob_is_not_resumed_under_the_new_recipe(
    missing: str, workdir: Path, tripwire: list[str], capfd, data_dir: Path
) -> None:
    """Its unstarted trials would train with the knob, its first ones trained without: one study
    of two recipes. A trial's checkpoint saved by that day's code (TrainConfig.to_dict() had no
    such key) is what tells."""
    import torch

    from trainables.checkpoint_files import LOOP_STATE
    from trainables.train_config import ADDED_KNOBS, TrainConfig
    from tuner.cli import run_cli
    from tuner.run import main

    study = workdir / "results" / "e4_budget-smoke"
    for trial, recipe in (("trial_new", TrainConfig().to_dict()),
                          ("trial_old", {k: v for k, v in TrainConfig().to_dict().items()
                                         if k != missing})):  # fmt: skip
        (study / trial / "checkpoint_000001").mkdir(parents=True)
        torch.save({"config": recipe}, study / trial / "checkpoint_000001" / LOOP_STATE)
    (study / "trial_cut" / "checkpoint_000001").mkdir(parents=True)  # a write cut short: skipped
    (study / "trial_cut" / "checkpoint_000001" / LOOP_STATE).write_bytes(b"PK\x03\x04")
    (study / "tuner.pkl").write_bytes(b"a study started here")
    (study / "experiment.json").write_text('{"fuse": 0, "git_commit": "0123abc"}')
    before = sorted(workdir.rglob("*"))
    code = run_cli(main, ["e4_budget", *SMOKE, "--storage", str(workdir / "results"), "--resume"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        f"error: --resume: trial_old trained before {missing} (commit {ADDED_KNOBS[missing][0]}); "
        "the study's other trials would train with it: resume with the commit that started the "
        "study (0123abc)"
    ], err
    assert tripwire == [] and sorted(workdir.rglob("*")) == before


def test_the_table_covers_every_kind_of_bad_input() -> None:
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


SUBPROCESS_CASES = ("rank 0", "tracking URI refused")


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_as_a_real_process(case: str, workdir: Path, data_dir: Path) -> None:
    """The same refusals from ``python -m tuner.run`` itself: its exit code, its whole stderr."""
    _, argv, needle = next(c for c in CASES if c[0] == case)
    env = {**os.environ, "PEFT_TUNE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           "RAY_TMPDIR": str(workdir / "ray"), "PEFT_TUNE_ADAPTERS": str(workdir / "adapters"),
           "PEFT_TUNE_CACHE_DIR": str(workdir / "tokens")}  # fmt: skip
    argv = [_fill(a, workdir) for a in argv] + ["--storage", str(workdir / "results")]
    proc = subprocess.run([sys.executable, "-m", "tuner.run", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and _fill(needle, workdir) in lines[0], proc.stderr[-3000:]
    assert_nothing_started(workdir)
