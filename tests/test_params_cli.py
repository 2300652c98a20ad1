"""``python -m tuner.params``: reference figures, --verify, --json, and exit 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search_spaces.method_config import MethodConfig
from search_spaces.shapes import MINILM_L6
from tuner.cli import run_cli
from tuner.params import ParamsReport, main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run_cli(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "figure"),
    [
        (["--method", "lora", "--set", "rank=8", "--set", "placement=attn_qv"], "74,498"),
        (["--method", "pfeiffer", "--set", "bottleneck=24"], "113,810"),
        (["--method", "fusion", "--set", "fusion=static", "--set", "sources=a,b,c"], "1,774,850"),
        (["--method", "fusion", "--set", "fusion=dynamic", "--set", "sources=a"], "2,659,586"),
    ],
)
def test_reference_figures(
    capsys: pytest.CaptureFixture[str], argv: list[str], figure: str
) -> None:
    code, out, _ = run(capsys, "--backbone", "minilm-l6", *argv)
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("trainable_params"))
    assert figure in line and "constrains" in line


def test_verify_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "--method", "lora_fusion", "--set", "sources=a,b", "--verify", "--json"
    )
    data = json.loads(out)
    assert code == 0 and data["verified"] is True
    assert data["built"] == {
        "trainable_params": data["trainable_params"],
        "added_params": data["added_params"],
    }
    assert data["budget_constrains"] == "trainable_params"


def test_verify_on_meta_bert_base(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--backbone", "bert-base", "--method", "houlsby", "--verify")
    assert code == 0 and "ok" in out


def test_layer_ranks_keep_layer_order(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--method", "lora", "--set", "layer_ranks=8,0,0,0,0,2", "--json")
    assert code == 0 and json.loads(out)["config"]["layer_ranks"] == [8, 0, 0, 0, 0, 2]


def test_mismatch_report_shows_the_diff() -> None:
    report = ParamsReport(
        "minilm-l6", MINILM_L6, MethodConfig("lora"), 74_498, 74_498,
        built={"trainable_params": 74_499, "added_params": 74_498},
    )  # fmt: skip
    assert report.mismatches == {"trainable_params": (74_498, 74_499)}
    assert "predicted 74,498, built 74,499 (+1)" in report.to_text()
    assert report.to_dict()["verified"] is False


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--method", "lora", "--set", "rank=0"], "rank=0"),
        (["--method", "lora", "--set", "placement=heads"], "placement='heads'"),
        (["--method", "lorra"], "method='lorra'"),
        (["--method", "fusion"], "needs sources"),
        (["--method", "lora", "--set", "rank"], "key=value"),
        (["--method", "unipelt", "--set", "placement=all"], "placement='all'"),
        (["--backbone", "./no-such-folder", "--method", "lora"], "backbone="),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err


def test_module_entry_point_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tuner.params", "--method", "lora", "--set", "rank=0"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == "error: rank=0 must be a positive integer\n"


def test_table_lists_every_method_with_its_paper(capsys: pytest.CaptureFixture[str]) -> None:
    from trainables.methods import METHOD_REGISTRY

    code, out, _ = run(capsys, "--table", "--set", "sources=a,b")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "arxiv" in line]
    assert code == 0 and len(rows) == len(METHOD_REGISTRY)
    assert any(r.startswith("| lora | 74,498 | 74,498 |") for r in rows)


def test_adalora_reports_the_figure_its_budget_counts():
    from search_spaces.method_config import MethodConfig
    from tuner.params import report

    final = report("minilm-l6", MethodConfig(method="adalora"), check=False)
    assert final.budget_constrains == "budget_trainable"
    assert final.budget_trainable == 74_594 < final.trainable_params == 111_506
    assert "budget_trainable          74,594  <- a budget constrains this" in final.to_text()
    initial = report(
        "minilm-l6", MethodConfig(method="adalora", budget_rank="initial"), check=False
    )
    assert initial.budget_trainable is None and initial.budget_constrains == "trainable_params"
