"""A study as one canonical table: one row per trial, from MLflow or from a Ray Tune results folder.

Both loaders first reduce a trial to a :class:`TrialRecord` in MLflow's own terms (params as the
text MLflow stores, metrics per evaluation step, the status tag), then one function builds the
frame, so the same study gives the same frame whichever store it is read from.

Columns of :attr:`Study.trials`: ``trial_id``, ``status``, ``fidelity``, ``evaluation`` (how many
evaluations were logged), the public params (``tuner.tracking.PARAM_KEYS`` that any trial has), then
every final metric (the value at the last evaluation that logged it). :attr:`Study.history` is
long: one row per (``trial_id``, ``evaluation``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.completeness import Completeness, completeness
from analysis.params import param_text, parse_param
from search_spaces.errors import ConfigError
from tuner.study import PARENT_RUN_FILE
from tuner.tracking import PARAM_KEYS, STEP_KEY, numeric_metrics, trial_status

ID_COLUMNS = ("trial_id", "status", "fidelity", "evaluation")
# Tune's trial states -> ours, for a trial the driver has not finished (see _tune_states)
_RUNNING_STATES = {"RUNNING", "PENDING", "PAUSED"}


@dataclass(frozen=True)
class TrialRecord:
    """One trial as MLflow holds it: params as text, one metrics mapping per evaluation."""

    trial_id: str
    status: str
    params: Mapping[str, str]
    history: tuple[tuple[int, Mapping[str, float]], ...]  # (evaluation, metrics), increasing


@dataclass(frozen=True, eq=False)
class Study:
    """A loaded study: the trials table, their histories, what is missing, and where it came from."""

    experiment: str
    trials: pd.DataFrame
    history: pd.DataFrame
    completeness: Completeness
    plan: Mapping[str, Any] = field(default_factory=dict)  # the resolved experiment, if recorded
    source: str = ""
    # the study's MLflow parent run(s), as (tracking URI, run id), where known: the report goes there
    mlflow_runs: tuple[tuple[str, str], ...] = ()


def build_frames(records: Iterable[TrialRecord]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The canonical (trials, history) frames of ``records``, sorted by trial id."""
    records = sorted(records, key=lambda r: r.trial_id)
    params_seen = {k for r in records for k in r.params}
    param_cols = [k for k in PARAM_KEYS if k in params_seen]
    rows, history = [], []
    for r in records:
        final: dict[str, float] = {}
        for evaluation, metrics in r.history:
            final.update(metrics)
            history.append({"trial_id": r.trial_id, "evaluation": evaluation, **metrics})
        params = {k: parse_param(r.params[k]) if k in r.params else None for k in param_cols}
        for key in ("trainable_params", "added_params"):  # measured counts fill a missing param
            if params.get(key) is None and key in final:
                params[key] = int(final[key])
        metrics = {k: v for k, v in final.items() if k not in params and k != "fidelity"}
        evaluation = r.history[-1][0] if r.history else 0
        rows.append({"trial_id": r.trial_id, "status": r.status,
                     "fidelity": final.get("fidelity", float("nan")), "evaluation": evaluation,
                     **params, **dict(sorted(metrics.items()))})  # fmt: skip
    trials = pd.DataFrame(rows, columns=_columns(rows, [*ID_COLUMNS, *param_cols]))
    hist = pd.DataFrame(history, columns=_columns(history, ["trial_id", "evaluation"]))
    return trials.reset_index(drop=True), hist.reset_index(drop=True)


def _columns(rows: list[dict], first: list[str]) -> list[str]:
    rest = sorted({k for row in rows for k in row} - set(first))
    return [*first, *rest]


def make_study(
    experiment: str, records: list[TrialRecord], plan: Mapping[str, Any], source: str,
    mlflow_runs: tuple[tuple[str, str], ...] = (),
) -> Study:  # fmt: skip
    trials, history = build_frames(records)
    return Study(experiment, trials, history, completeness(experiment, trials, plan), plan, source,
                 mlflow_runs)  # fmt: skip


# --- MLflow -----------------------------------------------------------------------------------


def load_mlflow(
    tracking_uri: str,
    experiment_name: str,
    parent_run_id: str | None = None,
    *,
    all_parents: bool = False,
) -> Study:
    """The trials under one parent run (default: the newest), or under every parent of the
    experiment (``all_parents=True``, e.g. E1 run once per task). Raises ``ConfigError`` for an
    unusable URI, an unknown experiment or parent run."""
    from tuner.tracking import connect

    client = connect(tracking_uri, create=False)  # reading: a missing store is a typo
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise ConfigError(
            f"no MLflow experiment {experiment_name!r} at {tracking_uri}; experiments there: {names}"
        )
    parents = _parents(client, exp.experiment_id, experiment_name, parent_run_id, all_parents)
    records = []
    for parent in parents:
        query = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        for run in client.search_runs([exp.experiment_id], query, max_results=50_000):
            records.append(_mlflow_record(client, run))
    plan = _mlflow_plan(client, parents[0].info.run_id)
    ids = ",".join(p.info.run_id for p in parents)
    return make_study(experiment_name, records, plan, f"mlflow {tracking_uri} parent run {ids}",
                      tuple((tracking_uri, p.info.run_id) for p in parents))  # fmt: skip


def _parents(client: Any, experiment_id: str, name: str, run_id: str | None, every: bool) -> list:
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except Exception:  # MLflow raises its own error types for an unknown id
            raise ConfigError(f"parent_run_id={run_id!r} is not a run of this store") from None
        if run.info.experiment_id != experiment_id:
            raise ConfigError(f"parent_run_id={run_id!r} is not a run of experiment {name!r}")
        return [run]
    runs = client.search_runs(
        [experiment_id], "tags.role = 'study'", order_by=["attributes.start_time DESC"]
    )
    if not runs:
        raise ConfigError(f"MLflow experiment {name!r} has no study run (tag role=study)")
    return list(runs) if every else [runs[0]]


def _mlflow_record(client: Any, run: Any) -> TrialRecord:
    steps: dict[int, dict[str, float]] = {}
    for key in sorted(run.data.metrics):
        for m in client.get_metric_history(run.info.run_id, key):
            steps.setdefault(int(m.step), {})[key] = float(m.value)
    params = {k: v for k, v in run.data.params.items() if k in PARAM_KEYS}
    trial_id = run.data.tags.get("trial_id", run.info.run_id)
    status = run.data.tags.get("status", "running")
    return TrialRecord(trial_id, status, params, tuple(sorted(steps.items())))


def _mlflow_plan(client: Any, parent_run_id: str) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(parent_run_id, "experiment.json", dst_path=tmp)
        except Exception:  # a parent without the artifact: the study plan is simply unknown
            return {}
        data = read_json(Path(local)) or {}
    data.pop("provenance", None)
    return data


# --- Ray Tune results folder ------------------------------------------------------------------


def load_tune_folder(path: str | Path) -> Study:
    """The trials of a Tune results folder ``<storage>/<experiment>-<preset>``, with those of its
    seeds phase (the ``-seeds`` folder beside it, where the study has one), as MLflow has them
    under one parent run."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"results folder {str(folder)!r} does not exist")
    seeds = folder.with_name(folder.name + SEEDS_SUFFIX)
    phases = [folder, seeds] if seeds.is_dir() else [folder]
    trial_dirs = [d for phase in phases for d in sorted(phase.iterdir()) if is_trial_dir(d)]
    if not trial_dirs:
        raise ConfigError(f"results folder {str(folder)!r} holds no trial folders")
    recorded = read_json(folder / "experiment.json") or {}
    plan = dict(recorded.get("experiment", {}))
    name = plan.get("name") or folder.name.rsplit("-", 1)[0]
    states = {k: v for phase in phases for k, v in _tune_states(phase).items()}
    records = [_tune_record(d, states) for d in trial_dirs]
    parent = folder / PARENT_RUN_FILE  # tuner.launch keeps the parent run's id beside the trials
    runs = ((str(recorded["tracking_uri"]), parent.read_text().strip()),) if (
        parent.exists() and recorded.get("tracking_uri")) else ()  # fmt: skip
    return make_study(name, records, plan, f"tune folder {folder}", runs)


SEEDS_SUFFIX = "-seeds"  # tuner.launch names the seeds phase's Tune run "<study>-seeds"


def is_trial_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "params.json").exists() or (path / "result.json").exists())


def _tune_record(trial_dir: Path, states: Mapping[str, str]) -> TrialRecord:
    config = read_json(trial_dir / "params.json") or {}
    results = read_results(trial_dir / "result.json")
    trial_id = trial_id_of(trial_dir, results)
    history, logged = [], 0
    for result in results:  # the MLflow logger's rule: an evaluation is logged once
        step = int(result.get(STEP_KEY, result.get("training_iteration", 0)))
        if step <= logged:
            continue
        history.append((step, numeric_metrics(result)))
        logged = step
    # as MLflow holds them: a knob left None is not a param (tuner.tracking logs no None)
    params = {k: param_text(config[k]) for k in PARAM_KEYS if config.get(k) is not None}
    last = results[-1] if results else None
    state = states.get(trial_id)
    error = state == "ERROR" or (state is None and _has_error_file(trial_dir))
    status = "running" if state in _RUNNING_STATES else trial_status(last, error=error)
    if states and state is None:  # a folder of a trial the saved state lost (tuner.reconcile)
        status = "killed"
    return TrialRecord(trial_id, status, params, tuple(history))


def _tune_states(folder: Path) -> dict[str, str]:
    """trial_id -> Tune's status (TERMINATED, ERROR, RUNNING...) from the newest experiment state."""
    files = sorted(folder.glob("experiment_state-*.json"))
    data = read_json(files[-1]) if files else None
    states: dict[str, str] = {}
    for entry in (data or {}).get("trial_data", []):
        try:
            state = json.loads(entry[0])
            states[str(state["trial_id"])] = str(state["status"])
        except (TypeError, ValueError, KeyError, IndexError):
            continue  # a Ray version with another layout: fall back on the trial folders
    return states


def trial_id_of(trial_dir: Path, results: list[dict]) -> str:
    for result in results:
        if result.get("trial_id"):
            return str(result["trial_id"])
    match = re.match(r".*?_([0-9a-f]{5,}(?:_\d{5})?)_\d+_", trial_dir.name)
    if match:
        return match.group(1)
    return trial_dir.name.removeprefix("trial_")  # tuner.launch names them trial_<trial_id>


def _has_error_file(trial_dir: Path) -> bool:
    return (trial_dir / "error.txt").exists() or (trial_dir / "error.pkl").exists()


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    results = []
    for line in path.read_text().splitlines():
        try:
            results.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash mid-write
    return results


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
