"""Forgiving, fast command lines, each checked on the real CLI in a real process.

``--set`` takes several pairs at once; an unknown name is refused with the closest registered
names; an unknown backbone is refused at once when no hub is in reach (``HF_HUB_OFFLINE`` unset);
``tuner.run --list`` and ``--help`` import none of the training stack; ``tuner.params --table``
prints every method; ``analysis.report`` refuses a study without a completed trial and a store
that does not exist, in one line each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "sklearn", "ray", "mlflow", "optuna", "pandas")
# a hub that is certainly out of reach: nothing listens on the discard port of this machine
NO_HUB = "http://127.0.0.1:9"
REFUSAL_BOUND_S = 5.0  # the refusal takes about 1 s; the bound leaves room for a busy machine


def cli(*argv: str, cwd: Path = ROOT, **env: str | None) -> subprocess.CompletedProcess[str]:
    """``python -m argv...`` with the test's environment; ``NAME=None`` unsets NAME."""
    full = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT), full.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line of a refused command (exit 2, nothing on stdout)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert proc.stdout == ""
    return lines[0]


# --- 1. --set KEY=VALUE KEY=VALUE -------------------------------------------------------------


# every CLI with --set (the module of its parser), and the arguments it requires besides
SET_CLIS = {"tuner.run": [], "tuner.train": ["--task", "glue/sst2", "--method", "lora"],
            "tuner.params": ["--method", "lora"], "tuner.bench.cli": []}  # fmt: skip


@pytest.mark.parametrize("module", sorted(SET_CLIS))
def test_every_set_takes_several_pairs_and_repeats(module: str) -> None:
    import importlib

    parser = importlib.import_module(module).parser()
    argv = [*SET_CLIS[module], "--set", "rank=8", "placement=all", "--set", "lr=1e-3"]
    assert parser.parse_args(argv).set == ["rank=8", "placement=all", "lr=1e-3"]


def test_params_applies_every_pair_after_one_set() -> None:
    proc = cli("tuner.params", "--method", "lora", "--set", "rank=4", "placement=all",
               "--set", "alpha=16", "--json", HF_HUB_OFFLINE="1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads(proc.stdout)["config"]
    assert (config["rank"], config["placement"], config["alpha"]) == (4, "all", 16.0)


def test_run_applies_every_pair_after_one_set(data_dir: Path) -> None:
    proc = cli("tuner.run", "e4_budget", "--preset", "smoke", "--dry-run", "--json",
               "--set", "tolerance=0.2", "budget_params=5000", "num_samples=2",
               HF_HUB_OFFLINE="1", PEFT_TUNE_DATA_DIR=str(data_dir))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    configs = json.loads(proc.stdout)
    assert len(configs) == 2
    assert all(c["budget_params"] == 5000 and c["tolerance"] == 0.2 for c in configs)


def test_a_name_swallowed_by_set_says_where_to_put_it() -> None:
    line = one_error_line(cli("tuner.run", "--set", "rank=8", "e4_budget"))
    assert "'e4_budget' is not key=value" in line and "before it" in line


# --- 2. an unknown backbone, no hub in reach ----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["tuner.run", "e4_budget", "--preset", "smoke", "--dry-run", "--set", "backbone=minilm"],
        ["tuner.params", "--backbone", "minilm", "--method", "lora"],
        ["tuner.train", "--task", "glue/sst2", "--method", "lora", "--backbone", "minilm"],
    ],
    ids=["run", "params", "train"],
)
def test_unknown_backbone_without_a_hub_is_refused_at_once(argv: list[str]) -> None:
    started = time.monotonic()
    proc = cli(*argv, HF_HUB_OFFLINE=None, TRANSFORMERS_OFFLINE=None, HF_ENDPOINT=NO_HUB)
    elapsed = time.monotonic() - started
    line = one_error_line(proc)
    assert "backbone='minilm'" in line and "did you mean minilm-l6?" in line, line
    assert "out of reach" in line and "Retry" not in proc.stderr
    assert elapsed < REFUSAL_BOUND_S, f"{elapsed:.1f} s"


def test_a_path_that_is_no_folder_is_refused_without_asking_the_hub(tmp_path: Path) -> None:
    from search_spaces.errors import ConfigError
    from trainables.backbone_registry import backbone_source

    with pytest.raises(ConfigError, match="not a folder$"):
        backbone_source(str(tmp_path / "gone"))
    assert backbone_source(str(tmp_path)) == "folder"
    assert backbone_source("minilm-l6") == "registered"


# --- 4. --list and --help stay light ------------------------------------------------------------

LIST_AND_CHECK = """
import contextlib, io, sys
from tuner.run import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:])
assert code == 0 and "e4_budget" in out.getvalue(), out.getvalue()
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--list"], ["--list", "--json"]])
def test_list_imports_none_of_the_training_stack(argv: list[str]) -> None:
    code = LIST_AND_CHECK.format(heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", f"imported by --list: {proc.stdout.strip()}"


def test_help_imports_none_of_the_training_stack() -> None:
    code = (
        "import contextlib, io, sys\nfrom tuner.run import parser\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n        parser().parse_args(['--help'])\n    except SystemExit:\n        pass\n"
        "assert '--set' in out.getvalue()\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", f"imported by --help: {proc.stdout.strip()}"


# --- 5. did you mean, on every registry ---------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "bad", "meant"),
    [
        (["e4_budgte"], "experiment='e4_budgte'", "e4_budget"),
        (["e4_budget", "--preset", "smok"], "preset='smok'", "smoke"),
        (["e4_budget", "--set", "method=lorra"], "method='lorra'", "lora"),
        (["e4_budget", "--set", "task=glue/sst3"], "task='glue/sst3'", "glue/sst2"),
        (["e4_budget", "--set", "backbone=minilm"], "backbone='minilm'", "minilm-l6"),
        (["e4_budget", "--set", "tolerence=0.1"], "'tolerence'", "tolerance"),
    ],
    ids=["experiment", "preset", "method", "task", "backbone", "set key"],
)
def test_unknown_names_get_the_closest_registered_ones(
    argv: list[str], bad: str, meant: str, data_dir: Path
) -> None:
    proc = cli("tuner.run", *argv, HF_HUB_OFFLINE="1", PEFT_TUNE_DATA_DIR=str(data_dir))
    line = one_error_line(proc)
    assert bad in line and "did you mean " in line, line
    assert meant in line.split("did you mean ", 1)[1], line


def test_report_suggests_a_family_too() -> None:
    line = one_error_line(cli("analysis.report", "glue_method", "--results", "."))
    assert "did you mean glue_methods" in line, line


def test_did_you_mean_is_empty_when_nothing_is_close() -> None:
    from search_spaces.errors import did_you_mean, one_of

    assert did_you_mean("zzz", ["lora", "full"]) == ""
    assert str(one_of("method", "lorra", ["full", "lora"])).endswith("; did you mean lora?")


# --- 6. tuner.params --table ----------------------------------------------------------------


def test_params_table_as_the_readme_runs_it() -> None:
    from trainables.methods import METHOD_REGISTRY

    proc = cli("tuner.params", "--table", HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Fusion methods (fusion, lora_fusion) fuse 3 sources: glue/sst2")
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines if "arxiv" in line}
    assert sorted(rows) == METHOD_REGISTRY.names()
    assert rows["lora"].startswith("| lora | 74,498 | 74,498 |")
    assert rows["fusion"].startswith("| fusion | 2,659,586 |")  # three sources, as noted


# --- 3. a study without a completed trial ---------------------------------------------------


def test_report_on_a_study_without_a_completed_trial(tmp_path: Path) -> None:
    """The store a driver leaves when it dies before a trial completes: the study's parent run
    (tuner.launch's own) and one child run that failed at its first evaluation."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from tuner.experiments import get_experiment
    from tuner.launch import parent_run
    from tuner.tracking import MlflowLogger, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = get_experiment("e4_budget").with_preset("smoke")
    client = MlflowClient(tracking_uri=uri)
    experiment_id = ensure_experiment(client, exp.name)
    parent = parent_run(client, experiment_id, exp, "smoke", None, resume=False)
    logger = MlflowLogger(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent,
                          tags={"experiment": exp.name})  # fmt: skip
    trial = SimpleNamespace(trial_id="aa000001", config={"method": "lora", "rank": 4},
                            last_result=None, checkpoint=None)  # fmt: skip
    logger.on_trial_start(0, [], trial)
    logger.on_trial_error(0, [], trial)

    out = tmp_path / "report"
    proc = cli("analysis.report", "e4_budget", "--tracking-uri", uri, "--out", str(out))
    line = one_error_line(proc)
    assert "no completed trial yet (1 failed)" in line and "KeyError" not in proc.stderr, line
    assert not out.exists()


# --- 7. tracking URIs a reader must not create ------------------------------------------------


def test_report_refuses_a_missing_sqlite_file_and_names_the_one_beside_it(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"")
    line = one_error_line(cli("analysis.report", "e4_budget", "--tracking-uri",
                              "sqlite:///typo.db", cwd=tmp_path))  # fmt: skip
    assert f"no database at {tmp_path / 'typo.db'}" in line, line
    assert f"did you mean sqlite:///{tmp_path / 'mlflow.db'}?" in line, line
    assert not (tmp_path / "typo.db").exists()


def test_a_bare_db_path_gets_its_sqlite_uri(tmp_path: Path) -> None:
    line = one_error_line(cli("analysis.report", "e4_budget", "--tracking-uri", "mlflow.db",
                              cwd=tmp_path))  # fmt: skip
    assert f"did you mean sqlite:///{tmp_path / 'mlflow.db'}?" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []
