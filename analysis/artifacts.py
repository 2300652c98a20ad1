"""What a study keeps beside its metrics, per trial: the full config and the final method weights.

The trials table carries the params of ``tuner.tracking.PARAM_KEYS`` only; the new studies' knobs
(``fusion_init``, ``lora_placement_rule``, ``layer_modules``, ...) and what a method saved in its
weights (AdaLoRA's singular values, lora_grow's rank, the entropy record of fusion-aware
placement) are read here, from the same store the study was loaded from:

* a Tune folder: ``<trial>/params.json`` and the newest ``<trial>/checkpoint_*/method.safetensors``;
* MLflow: each child run's ``config.json`` and ``weights/method.safetensors`` artifacts (logged by
  the driver when the trial finished).

Weights are read with safetensors' numpy API: no torch.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.params import param_text, parse_param
from analysis.trials import Study
from trainables.checkpoint_files import WEIGHTS

_TUNE = re.compile(r"^tune folder (.+)$")
_MLFLOW = re.compile(r"^mlflow (\S+) parent run (\S+)$")
SOURCE_SEPARATOR = "; "  # a combined study (a family) joins its members' sources with it


@dataclass(frozen=True)
class TrialArtifacts:
    """One trial's recorded config and, if it saved any, its final method weights."""

    config: Mapping[str, Any]
    weights: Mapping[str, np.ndarray] | None


def load_artifacts(study: Study) -> dict[str, TrialArtifacts]:
    """trial_id -> its artifacts, for every trial whose store still holds them."""
    found: dict[str, TrialArtifacts] = {}
    for source in study.source.split(SOURCE_SEPARATOR):
        tune = _TUNE.match(source)
        mlflow = _MLFLOW.match(source)
        if tune:
            found.update(_from_tune(Path(tune.group(1))))
        elif mlflow:
            found.update(_from_mlflow(mlflow.group(1), mlflow.group(2).split(",")))
    return found


def with_config_keys(
    trials: pd.DataFrame, artifacts: Mapping[str, TrialArtifacts], keys: Iterable[str]
) -> pd.DataFrame:
    """``trials`` plus each of ``keys`` it lacks, from the recorded configs (text parsed as the
    loaders parse params: ``None`` -> None, numbers -> numbers, lists -> comma-separated text)."""
    out = trials.copy()
    for key in keys:
        if key in out.columns:
            continue
        values = [_param(artifacts[t].config.get(key)) if t in artifacts else None
                  for t in out["trial_id"]]  # fmt: skip
        out[key] = pd.Series(values, index=out.index, dtype=object)  # None stays None
    return out


def _param(value: Any) -> Any:
    return None if value is None else parse_param(param_text(value))


def _read_weights(path: Path) -> dict[str, np.ndarray] | None:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception:  # a weights file cut short or of another format: the trial has none
        return None


def _from_tune(folder: Path) -> dict[str, TrialArtifacts]:
    from analysis.trials import is_trial_dir, read_json, read_results, trial_id_of

    found = {}
    if not folder.is_dir():
        return found
    for trial_dir in sorted(p for p in folder.iterdir() if is_trial_dir(p)):
        trial_id = trial_id_of(trial_dir, read_results(trial_dir / "result.json"))
        checkpoints = sorted(trial_dir.glob(f"checkpoint_*/{WEIGHTS}"))
        weights = _read_weights(checkpoints[-1]) if checkpoints else None
        found[trial_id] = TrialArtifacts(read_json(trial_dir / "params.json") or {}, weights)
    return found


def _from_mlflow(tracking_uri: str, parent_ids: list[str]) -> dict[str, TrialArtifacts]:
    from tuner.tracking import connect

    client = connect(tracking_uri, create=False)
    found = {}
    for parent in parent_ids:
        experiment_id = client.get_run(parent).info.experiment_id
        query = f"tags.`mlflow.parentRunId` = '{parent}'"
        for run in client.search_runs([experiment_id], query, max_results=50_000):
            trial_id = run.data.tags.get("trial_id", run.info.run_id)
            found[trial_id] = _mlflow_trial(client, run.info.run_id)
    return found


def _mlflow_trial(client: Any, run_id: str) -> TrialArtifacts:
    # a trial that never finished has neither artifact: it keeps an empty config and no weights
    config: dict[str, Any] = {}
    weights = None
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.suppress(Exception):
            config = json.loads(
                Path(client.download_artifacts(run_id, "config.json", tmp)).read_text()
            )
        with contextlib.suppress(Exception):
            weights = _read_weights(
                Path(client.download_artifacts(run_id, f"weights/{WEIGHTS}", tmp))
            )
    return TrialArtifacts(config, weights)


__all__ = ["SOURCE_SEPARATOR", "TrialArtifacts", "load_artifacts", "with_config_keys"]
