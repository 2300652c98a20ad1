"""``python -m tuner.data``: bad input exits 2 with one line; describe and list report real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from search_spaces.errors import ConfigError
from trainables.data.tasks import TASKS
from tuner.cli import run_cli
from tuner.data import main, render_split_table, render_task_table

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tuner.data", *args],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_unknown_task_exits_2_with_one_line() -> None:
    line = _one_error_line(_cli("describe", "glue/sst3"))
    assert "'glue/sst3'" in line and "glue/sst2" in line


def test_missing_folder_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_folder"
    assert str(missing) in _one_error_line(_cli("describe", str(missing)))


def test_wrong_columns_exit_2_naming_them(tmp_path: Path) -> None:
    pd.DataFrame({"review": ["good"], "stars": [5]}).to_csv(tmp_path / "train.csv", index=False)
    line = _one_error_line(_cli("describe", str(tmp_path)))
    assert "['review', 'stars']" in line and "'text'" in line


def test_missing_data_dir_exits_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "mirror")
    assert missing in _one_error_line(_cli("describe", "glue/rte", "--data-dir", missing))


def test_list_prints_one_line_per_task() -> None:
    result = _cli("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == TASKS.names()
    assert "rebuild" in next(line for line in lines if line.startswith("tweet_eval/sentiment"))


def test_describe_json_on_a_registered_task(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["describe", "uci_sentiment/amazon", "--data-dir", str(data_dir), "--json", "--max-length", "16"]) == 0  # fmt: skip
    info = json.loads(capsys.readouterr().out)
    assert info["official"] == {"train": 1000}
    assert sum(info["honest"].values()) == 1000 and info["test_source"] == "carved from train"
    assert sum(info["labels"]["test"].values()) == info["honest"]["test"]
    tokens = info["tokens"]
    assert tokens["p50"] <= tokens["p90"] <= tokens["p95"] <= tokens["p99"] <= tokens["max"]
    assert 0.0 < tokens["truncated_share"] < 1.0  # a few UCI sentences exceed 16 tokens


def test_describe_text_on_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = [f"sentence number {i} is {'good' if i % 2 else 'bad'}" for i in range(40)]
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(40)]}).to_parquet(tmp_path / "train.parquet")  # fmt: skip
    assert main(["describe", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "official splits: train 40" in out and "truncated at max_length=128: 0.0%" in out


def test_run_cli_turns_config_error_into_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    def failing(argv: list[str]) -> int:
        raise ConfigError(f"bad={argv[0]!r}\nsecond line")

    assert run_cli(failing, ["x"]) == 2
    assert capsys.readouterr().err == "error: bad='x' second line\n"
    assert run_cli(lambda argv: 10 + len(argv), ["a", "b"]) == 12  # argv in, exit code through


def test_docs_table_matches_the_registry() -> None:
    docs = (ROOT / "docs" / "DATA.md").read_text()
    assert render_task_table() in docs and render_split_table() in docs
