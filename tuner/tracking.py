"""MLflow from the driver: one parent run per study, one nested child run per trial.

Only the driver writes (one writer, as Ray's own MLflow callback does), so many trials never
contend for the store and a sqlite store never sees a lock error. A restarted or resumed trial
keeps its child run: children are found again by their ``trial_id`` tag, and an evaluation that
was already logged is not logged twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search_spaces.errors import MAX_SUGGESTIONS, ConfigError, close_names

# The public config keys logged as params (others stay in the resolved-config artifact).
PARAM_KEYS = (
    "method", "rank", "alpha", "placement", "layers", "layer_ranks", "init_rank", "adalora_scale",
    "budget_rank", "bottleneck",
    "prefix_length", "prefix_reparam", "fusion", "sources", "fusion_layers", "target_bottleneck",
    "budget_params", "tolerance", "accounting", "lr", "seed", "task", "backbone", "head",
    "batch_size", "epochs", "train_samples", "trainable_params", "added_params", "budget_deviation",
    "start_rank", "grow_step", "grow_patience", "fusion_init", "source_similarity",
    "lora_placement_rule", "layer_modules", "parallel_bottleneck", "quantize", "head_init",
    "head_lr_scale", "head_lr_max",
)  # fmt: skip
STEP_KEY = "evaluation"  # the trial's 1-based evaluation count = Tune's training_iteration
SKIP_METRICS = {"training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
                "time_since_restore", "iterations_since_restore", "done", "evaluation",
                "trained_at"}  # fmt: skip
# Tune's names -> MLflow's: MLflow has its own ``step`` axis (here: the evaluation), so the
# optimiser's step count is logged under a name that cannot be mistaken for it.
RENAMED_METRICS = {"step": "optimizer_step"}


# While checking a URI: one HTTP attempt with a short timeout. MLflow's defaults (7 retries with
# exponential backoff, 120 s timeouts) take minutes to say that nothing listens there.
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def connect(tracking_uri: str, *, create: bool = True) -> MlflowClient:
    """A client for ``tracking_uri``, checked now so an unreachable store fails before any trial.
    ``create=False`` (commands that only read a store): a missing store is refused, not created."""
    check_tracking_uri(tracking_uri, create=create)
    try:
        with _first_use_lock(tracking_uri):
            client = MlflowClient(tracking_uri=tracking_uri)
            with _env_defaults(PROBE_ENV):
                client.search_experiments(max_results=1)
    except Exception as exc:  # any failure here means the URI cannot be used
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(f"tracking URI {tracking_uri!r} is not usable: {reason}") from None
    return client


DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def check_tracking_uri(tracking_uri: str, *, create: bool) -> None:
    """Refuse what MLflow would silently get wrong: a bare path to a database file (MLflow takes
    it for a folder store, with a deprecation warning), and with ``create=False`` a sqlite file
    or folder store that does not exist (MLflow would create an empty one and find nothing)."""
    if "://" not in tracking_uri and not tracking_uri.startswith("file:"):
        path = Path(tracking_uri).expanduser()
        if path.suffix in DB_SUFFIXES or path.is_file():
            raise ConfigError(
                f"tracking URI {tracking_uri!r} is a path, not a URI; "
                f"did you mean sqlite:///{path.resolve()}?"
            )
        if not create and not path.is_dir():
            raise ConfigError(f"tracking URI {tracking_uri!r}: no such folder {path.resolve()}")
        return
    if create or not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///").split("?")[0]).expanduser()
    if path.is_file():
        return
    raise ConfigError(
        f"tracking URI {tracking_uri!r}: no database at {path.resolve()}{_nearby_databases(path)}"
    )


def _nearby_databases(path: Path) -> str:
    """``"; did you mean sqlite:///..."`` for the database files beside ``path`` (the closest
    names first), or ``""``."""
    folder = path.resolve().parent
    if not folder.is_dir():
        return ""
    names = sorted(p.name for p in folder.iterdir() if p.suffix in DB_SUFFIXES and p.is_file())
    chosen = close_names(path.name, names) or names[:MAX_SUGGESTIONS]
    if not chosen:
        return ""
    return f"; did you mean {' or '.join(f'sqlite:///{folder / n}' for n in chosen)}?"


@contextlib.contextmanager
def _first_use_lock(tracking_uri: str) -> Iterator[None]:
    """One process at a time opens a sqlite store: MLflow creates a new store's tables without a
    lock, and two drivers doing it at once fail (``duplicate column name``)."""
    if not tracking_uri.startswith("sqlite:"):
        yield
        return
    import fcntl

    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"peft-tune-mlflow-{digest}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _env_defaults(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set for the ``with`` block where the user has not set them."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if missing; safe when two drivers create it at once."""
    existing = client.get_experiment_by_name(name)
    if existing:
        return existing.experiment_id
    try:
        return client.create_experiment(
            name, artifact_location=artifact_location(client.tracking_uri)
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.get_experiment_by_name(name).experiment_id


def artifact_location(uri: str) -> str | None:
    """Artifacts of a ``sqlite:///DIR/x.db`` store go to ``DIR/mlartifacts``, beside the database
    (MLflow's default is ``./mlruns`` under the driver's working directory, which scatters them
    and leaves them behind when the results folder is copied). Other stores decide themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a Tune result that are worth a metric."""
    out = {}
    for key, value in result.items():
        if key in SKIP_METRICS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[RENAMED_METRICS.get(key, key)] = float(value)
    return out


class MlflowLogger(Callback):
    """Tune callback: logs every trial as a nested run under ``parent_run_id``."""

    def __init__(self, *, tracking_uri: str, experiment_id: str, parent_run_id: str, tags: dict):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = dict(tags)
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._logged_step: dict[str, int] = {}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def setup(self, **info: Any) -> None:
        # After a driver restart (--resume), find the children that already exist.
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'"
        )
        for run in runs:
            trial_id = run.data.tags.get("trial_id")
            if trial_id:
                self._runs[trial_id] = run.info.run_id
                history = self.client.get_metric_history(run.info.run_id, "dev_score")
                self._logged_step[trial_id] = max((m.step for m in history), default=0)

    def run_id(self, trial: Any) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        config = trial.config
        name = run_name(config, trial.trial_id)
        tags = {**self.tags, "trial_id": trial.trial_id, "mlflow.parentRunId": self.parent_run_id,
                "status": "running", "role": "trial"}  # fmt: skip
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        params = [Param(k, v) for k, v in trial_params(config).items()]
        self.client.log_batch(run.info.run_id, params=params)
        self._runs[trial.trial_id] = run.info.run_id
        return run.info.run_id

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if getattr(self, "_reconciled", False):  # a logger pickled in tuner.pkl may lack it
            return
        from tuner.reconcile import reconcile_runs

        reconcile_runs(self, trials)  # once: the trials a resumed Tune run restored
        self._reconciled = True

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        run_id = self.run_id(trial)
        step = int(result.get(STEP_KEY, result.get("training_iteration", 0)))
        if step <= self._logged_step.get(trial.trial_id, 0):
            return  # already logged before a restart
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numeric_metrics(result).items()]
        self.client.log_batch(run_id, metrics=metrics)
        self._logged_step[trial.trial_id] = step

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finish_trial(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finish_trial(trial, error=True)

    def finish_trial(self, trial: Any, *, error: bool) -> None:
        run_id = self.run_id(trial)
        status = trial_status(trial.last_result, error=error)
        self.client.set_tag(run_id, "status", status)
        if status == "stopped":  # FINISHED as it should be, but not to be read as a full run
            name = run_name(trial.config, trial.trial_id)
            self.client.update_run(run_id, name=f"{name}{STOPPED_SUFFIX}")
        self._log_artifacts(run_id, trial)
        self.client.set_terminated(run_id, "FAILED" if status in ("failed", "oom") else "FINISHED")

    def _log_artifacts(self, run_id: str, trial: Any) -> None:
        config_json = json.dumps(trial.config, indent=2, sort_keys=True, default=str)
        self.client.log_text(run_id, config_json, "config.json")
        checkpoint = trial.checkpoint
        if checkpoint is None:
            return
        folder = Path(checkpoint.path)
        for name in ("method.safetensors", "method_config.json"):
            if (folder / name).is_file():
                self.client.log_artifact(run_id, str(folder / name), "weights")


def trial_status(result: dict[str, Any] | None, *, error: bool) -> str:
    """One of completed / stopped / failed / oom, from a trial's last result."""
    if error:
        return "failed"
    result = result or {}
    if result.get("status") in ("oom", "failed"):
        return str(result["status"])
    return "completed" if result.get("fidelity", 0.0) >= 1.0 else "stopped"


def run_name(config: dict[str, Any], trial_id: str) -> str:
    """A name that reads well in the MLflow compare view, e.g. ``lora_fusion r6 dyn@L5 ab12``."""
    parts = [str(config.get("method", "trial"))]
    if config.get("rank") and config.get("method") in ("lora", "adalora", "lora_fusion", "unipelt"):
        parts.append(f"r{config['rank']}")
    if config.get("method") in ("fusion", "lora_fusion"):
        depth = config.get("fusion_layers") or "all"
        parts.append(f"{str(config.get('fusion', ''))[:3]}@{depth}")
    if config.get("bottleneck") and config.get("method") in ("houlsby", "pfeiffer"):
        parts.append(f"b{config['bottleneck']}")
    parts.append(trial_id.split("_")[-1][:5])
    return " ".join(parts)


# A trial that the scheduler stopped ended as designed: its run is FINISHED (KILLED would say it
# was interrupted), and its name says that it is not a full-length run.
STOPPED_SUFFIX = " (stopped by ASHA)"


def trial_params(config: dict[str, Any]) -> dict[str, str]:
    """The public config keys of a trial as MLflow params; keys whose value is None (a knob the
    trial's method does not have) are left out rather than logged as the text ``None``."""
    return {k: _param_str(config[k]) for k in PARAM_KEYS if config.get(k) is not None}


def _param_str(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)[:500]
