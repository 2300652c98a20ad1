"""The MLflow UI in a real browser: a smoke study, a real ``mlflow server`` on 127.0.0.1 and
headless Chromium with a fresh profile (a user who never opened MLflow). The experiment's page
links to the trials; the trials view is the runs table, not a traces page, with every trial's
method and dev score; a compare view of the two best trials loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cluster.mlflow_screens import (
    browse,
    find_chromium,
    run_smoke_study,
    study_pages,
    ui_server,
    visible_text,
)

pytestmark = [pytest.mark.slow]
CHROMIUM = find_chromium()
if CHROMIUM is None:
    pytest.skip(
        "no chromium on PATH (Debian: apt-get install chromium; .ci/bootstrap installs it)",
        allow_module_level=True,
    )
GENAI_PAGE = ("Detect Issues", "No data available for the selected time range")


@pytest.fixture(scope="module")
def ui(tmp_path_factory, data_dir):
    """The smoke study's store, served; its pages and trials (run name, method, dev score)."""
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PEFT_TUNE_DATA_DIR", str(data_dir))
        env.setenv("HF_HUB_OFFLINE", "1")
        uri = run_smoke_study(tmp / "results")
    client = MlflowClient(uri)
    pages = study_pages(client, "e4_budget")
    trials = client.search_runs([client.get_experiment_by_name("e4_budget").experiment_id],
                                "tags.role = 'trial'")  # fmt: skip
    with ui_server(uri, tmp) as address:
        yield address, pages, trials


def open_page(ui, key: str, tmp_path: Path) -> tuple[str, str]:
    address, pages, _ = ui
    png = tmp_path / f"{key}.png"
    dom = browse(CHROMIUM, f"{address}/{pages[key].route}", png=png, window=pages[key].window)
    assert png.stat().st_size > 10_000, "a screenshot of a rendered page"
    return dom, visible_text(dom)


def test_the_experiment_page_links_to_the_trials_table(ui, tmp_path):
    _, pages, _ = ui
    dom, text = open_page(ui, "experiment", tmp_path)
    assert "Split one trainable-parameter budget" in text, "the description shows"
    links = re.findall(r'<a[^>]*href="([^"]*)"[^>]*>Trials of the latest study', dom)
    assert [link.replace("&amp;", "&") for link in links] == [pages["runs"].route]


def test_the_trials_view_is_the_runs_table_with_method_and_dev_score(ui, tmp_path):
    _, _, trials = ui
    _, text = open_page(ui, "runs", tmp_path)
    assert not any(marker in text for marker in GENAI_PAGE), "a traces page, not the runs"
    assert "Model training" in text and "Run Name" in text
    assert "method" in text and "dev_score" in text and "test_score" in text
    assert f"{len(trials)} matching runs" in text, "the study's trials, not its parent"
    assert len(trials) >= 2
    for run in trials:
        assert run.info.run_name in text
        assert run.data.params["method"] in text
        assert repr(run.data.metrics["dev_score"]) in text, run.info.run_name
    stopped = [r for r in trials if r.data.tags["status"] == "stopped"]
    assert all(r.info.run_name.endswith("(stopped by ASHA)") for r in stopped)


def test_a_compare_view_of_the_two_best_trials_loads(ui, tmp_path):
    _, _, trials = ui
    best = sorted(trials, key=lambda r: r.data.metrics["dev_score"], reverse=True)[:2]
    _, text = open_page(ui, "compare", tmp_path)
    assert "Comparing 2 Runs from 1 Experiment" in text
    for run in best:
        assert run.info.run_name in text and run.info.run_id in text
    assert "dev_score" in text


def test_the_study_run_shows_its_setup_outcome_and_datasets(ui, tmp_path):
    _, text = open_page(ui, "study", tmp_path)
    assert "Best on dev" in text and "best_dev_score" in text and "trials_stopped" in text
    assert "tweet_eval/sentiment train" in text, "the train split as a dataset input"
