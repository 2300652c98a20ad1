"""``python -m cluster.mlflow_screens``: a study in the MLflow UI as a new user sees it, through
headless Chromium; screenshots for the docs.

python -m cluster.mlflow_screens --out docs/img          # runs the e4_budget smoke study first
python -m cluster.mlflow_screens --tracking-uri sqlite:///$HOME/peft-tune-results/mlflow.db \\
    --experiment e4_budget --out /tmp/screens             # a study you already ran

A real ``mlflow server`` on a free 127.0.0.1 port serves the store; Chromium (Debian's
``chromium``, or ``$CHROMIUM``) opens each page with a fresh profile, as someone who never used
MLflow's UI: the study's trials view, a compare view of its two best trials and the study's
parent run. Each page is written as ``mlflow_<name>.png``; the server stops with the command.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cluster.local import free_port
from cluster.mlflow_server import ServerConfig, prepare_storage, wait_ready
from search_spaces.errors import ConfigError
from tuner.cli import run_cli
from tuner.mlflow_views import trials_link

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BUDGET_MS = 10_000  # virtual time for the single-page app to fetch and render (~7 s of wall time)
BROWSER_TIMEOUT_S = 120


@dataclass(frozen=True)
class Page:
    """A UI route (after the server's address) and the screenshot it makes."""

    name: str
    route: str
    window: tuple[int, int] = (1920, 900)  # wide: MLflow's assistant panel takes a quarter


def find_chromium() -> str | None:
    """``$CHROMIUM``, else the first of :data:`BROWSERS` on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for b in BROWSERS if (path := shutil.which(b))), None)


def study_pages(client: object, experiment: str) -> dict[str, Page]:
    """The pages of the experiment's newest study: ``experiment`` (what a click in the list
    opens), ``runs`` (its trials, best first), ``compare`` (its two best trials), ``study``
    (the parent run)."""
    exp = client.get_experiment_by_name(experiment)  # type: ignore[attr-defined]
    if exp is None:
        raise ConfigError(f"no MLflow experiment {experiment!r} in this store")
    eid = exp.experiment_id
    parents = client.search_runs([eid], "tags.role = 'study'",  # type: ignore[attr-defined]
                                 order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
    if not parents:
        raise ConfigError(f"MLflow experiment {experiment!r} has no study run (tag role=study)")
    parent = parents[0].info.run_id
    trials = client.search_runs(  # type: ignore[attr-defined]
        [eid], f"tags.`mlflow.parentRunId` = '{parent}'", order_by=["metrics.dev_score DESC"]
    )
    best = [r.info.run_id for r in trials][:2]
    compare = urllib.parse.urlencode({"runs": json.dumps(best), "experiments": json.dumps([eid]),
                                      "workflowType": "machine_learning"})  # fmt: skip
    return {
        "experiment": Page("experiment", f"#/experiments/{eid}"),
        "runs": Page("runs", trials_link(eid, parent)),
        "compare": Page("compare", f"#/compare-runs?{compare}", (1920, 1400)),
        "study": Page(
            "study",
            f"#/experiments/{eid}/runs/{parent}?workflowType=machine_learning",
            (1920, 1200),
        ),
    }


def browse(chromium: str, url: str, *, png: Path | None = None,
           window: tuple[int, int] = (1920, 900), budget_ms: int = BUDGET_MS) -> str:  # fmt: skip
    """The page's DOM once rendered, with a screenshot to ``png``."""
    with tempfile.TemporaryDirectory(prefix="peft-tune-chromium-") as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--no-first-run", f"--user-data-dir={profile}",
                   f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}",
                   *([f"--screenshot={png}"] if png is not None else []), "--dump-dom", url]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"chromium failed on {url}: {proc.stderr[-1000:]}")
    return proc.stdout


def visible_text(dom: str) -> str:
    """A DOM's text: scripts, styles and tags removed, whitespace runs as one space."""
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


@contextlib.contextmanager
def ui_server(backend_store_uri: str, workdir: Path) -> Iterator[str]:
    """``mlflow server`` over the store on a free loopback port; yields its address."""
    config = ServerConfig(port=free_port(), backend_store_uri=backend_store_uri,
                          artifacts_destination=str(workdir / "served-artifacts"))  # fmt: skip
    prepare_storage(config)
    with open(workdir / "mlflow-server.log", "w") as log:
        proc = subprocess.Popen(config.command(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        if not wait_ready(config.tracking_uri, proc):
            raise RuntimeError(f"mlflow server did not start; see {workdir / 'mlflow-server.log'}")
        yield config.tracking_uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_smoke_study(folder: Path) -> str:
    """``e4_budget --preset smoke`` into ``folder``; its tracking URI."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    command = [sys.executable, "-m", "tuner.run", "e4_budget", "--preset", "smoke",
               "--storage", str(folder), "--tracking-uri", uri]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"the smoke study failed:\n{proc.stderr[-3000:]}")
    return uri


def shrink_png(path: Path) -> None:
    """A palette PNG (the UI has few colours): about a third of the size."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.mlflow_screens",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--tracking-uri", help="sqlite:///... store (default: run the smoke study)")
    p.add_argument("--experiment", default="e4_budget", help="default e4_budget")
    p.add_argument("--out", required=True, help="folder for mlflow_<page>.png")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        raise ConfigError(f"no browser: install Debian's chromium (or set $CHROMIUM); "
                          f"looked for {', '.join(BROWSERS)}")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peft-tune-screens-") as tmp:
        uri = args.tracking_uri or run_smoke_study(Path(tmp) / "results")
        from mlflow.tracking import MlflowClient

        pages = study_pages(MlflowClient(uri), args.experiment)
        with ui_server(uri, Path(tmp)) as address:
            for key in ("runs", "compare", "study"):
                png = out / f"mlflow_{key}.png"
                browse(chromium, f"{address}/{pages[key].route}", png=png,
                       window=pages[key].window)  # fmt: skip
                shrink_png(png)
                print(png)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
