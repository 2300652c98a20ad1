"""Run one study on Ray Tune: prepare data once, search with Optuna, stop early with ASHA, log to MLflow.

The order matters: everything a user can get wrong is checked before Ray starts or a run is logged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces.errors import ConfigError
from tuner.experiment import Experiment

DEFAULT_RESULTS = Path(os.environ.get("PEFT_TUNE_RESULTS", Path.home() / "peft-tune-results"))


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for; fractional GPUs pack several small trials on one GPU."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"cpus_per_trial={self.cpus_per_trial} must be > 0")
        if not 0 <= self.gpus_per_trial <= 8:
            raise ConfigError(f"gpus_per_trial={self.gpus_per_trial} must be in [0, 8]")

    @classmethod
    def auto(cls, cpus: float | None, gpus: float | None) -> Resources:
        """Defaults: on a GPU host a quarter GPU per trial (the embedded backbone packs well)."""
        import torch

        has_gpu = torch.cuda.is_available()
        default_gpus = 0.25 if has_gpu else 0.0
        return cls(
            cpus_per_trial=cpus or 1.0, gpus_per_trial=default_gpus if gpus is None else gpus
        )


@dataclass(frozen=True)
class StudyPaths:
    storage: str  # local folder or pyarrow.fs URI shared by every node
    name: str  # the Tune experiment folder under storage
    tracking_uri: str

    @property
    def local(self) -> Path | None:
        return None if "://" in self.storage else Path(self.storage)

    @property
    def study_dir(self) -> Path | None:
        return None if self.local is None else self.local / self.name


def study_paths(
    exp: Experiment, preset: str, storage: str | None, tracking: str | None
) -> StudyPaths:
    storage = storage or str(DEFAULT_RESULTS)
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    name = f"{exp.name}-{preset}"
    if tracking is None:
        if "://" in storage:
            raise ConfigError(f"--storage {storage!r} is remote: pass --tracking-uri as well")
        tracking = f"sqlite:///{Path(storage) / 'mlflow.db'}"
    elif "://" not in tracking:
        tracking = str(Path(tracking).expanduser().resolve())
    return StudyPaths(storage=storage, name=name, tracking_uri=tracking)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
