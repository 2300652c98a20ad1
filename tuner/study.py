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
from tuner.provenance import provenance

DEFAULT_GPUS_PER_TRIAL = 0.125
CLIENT_CPUS = 0.25  # a pooled trial's process: it relays reports and writes one checkpoint
PARENT_RUN_FILE = "mlflow_parent_run.txt"  # the study's MLflow parent run id, in its folder
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
    def auto(cls, cpus: float | None, gpus: float | None, *, cluster_gpus: float) -> Resources:
        """Defaults: where the cluster has GPUs (not necessarily the driver's node), an eighth of
        a GPU per trial: with graphed steps eight MiniLM trials through Tune under MPS reach 95 % of
        sixteen's aggregate on an H100, 2.9x one trial (docs/BENCHMARKS.md, packing with graphs)."""
        default_gpus = DEFAULT_GPUS_PER_TRIAL if cluster_gpus > 0 else 0.0
        return cls(
            cpus_per_trial=cpus or 1.0, gpus_per_trial=default_gpus if gpus is None else gpus
        )

    def concurrent_trials(self, cluster: dict[str, float]) -> int:
        """How many trials fit the cluster at once (``ray.cluster_resources()``). Tune lets a
        searcher other than random/grid keep only ONE trial pending unless told this number
        (``max_concurrent_trials``), so trials would start one actor start-up (~15 s) apart
        however many fit: measured on an H100, e4_budget ran ~1.3 trials at a time, not 8."""
        fits = [cluster.get("CPU", 0.0) / self.cpus_per_trial]
        if self.gpus_per_trial > 0:
            fits.append(cluster.get("GPU", 0.0) / self.gpus_per_trial)
        return max(1, int(min(fits) + 1e-9))


@dataclass(frozen=True)
class StudyPaths:
    storage: str  # local folder or pyarrow.fs URI shared by every node
    name: str  # the Tune experiment folder under storage
    tracking_uri: str


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


@dataclass(frozen=True)
class StudyFiles:
    """The study's own files (experiment.json, summary.json, the MLflow parent id) in its folder
    under the storage path: a local folder or a ``pyarrow.fs`` URI shared by every node."""

    storage: str
    name: str

    def _fs(self) -> tuple[Any, str]:
        from pyarrow import fs

        if "://" in self.storage:
            filesystem, root = fs.FileSystem.from_uri(self.storage)
            return filesystem, f"{root.rstrip('/')}/{self.name}"
        return fs.LocalFileSystem(), f"{self.storage}/{self.name}"

    def exists(self, rel: str) -> bool:
        from pyarrow import fs

        filesystem, base = self._fs()
        return filesystem.get_file_info(f"{base}/{rel}").type != fs.FileType.NotFound

    def remove(self) -> None:
        """Delete the study's folder, if there is one."""
        from pyarrow import fs

        filesystem, base = self._fs()
        if filesystem.get_file_info(base).type != fs.FileType.NotFound:
            filesystem.delete_dir(base)

    def read_text(self, rel: str) -> str | None:
        return self.read_bytes(rel).decode() if self.exists(rel) else None

    def read_bytes(self, rel: str) -> bytes:
        filesystem, base = self._fs()
        with filesystem.open_input_stream(f"{base}/{rel}") as stream:
            return stream.read()

    def named(self, filename: str) -> list[str]:
        """Every file called ``filename`` in the study's folder and below (paths relative to it)."""
        from pyarrow import fs

        filesystem, base = self._fs()
        if filesystem.get_file_info(base).type == fs.FileType.NotFound:
            return []
        found = filesystem.get_file_info(fs.FileSelector(base, recursive=True))
        return sorted(f.path[len(base) + 1 :] for f in found if f.base_name == filename)

    def write_text(self, rel: str, text: str) -> None:
        filesystem, base = self._fs()
        filesystem.create_dir(base, recursive=True)
        with filesystem.open_output_stream(f"{base}/{rel}") as stream:
            stream.write(text.encode())

    def read_json(self, rel: str) -> dict[str, Any]:
        """The JSON object at ``rel``; empty where there is none."""
        return json.loads(self.read_text(rel) or "{}")

    def write_json(self, rel: str, data: Any) -> None:
        self.write_text(rel, json.dumps(data, indent=2, sort_keys=True, default=str))


def refuse_an_older_recipe(files: StudyFiles) -> None:
    """``--resume`` of a study whose trials trained before a recipe knob existed (a checkpoint's
    recipe lacks it) is refused: its unstarted trials would train under today's recipe, one
    study of two recipes. The study resumes with the commit that started it."""
    import io

    from trainables.checkpoint_files import LOOP_STATE, saved_recipe
    from trainables.train_config import ADDED_KNOBS, knobs_missing

    local = "://" not in files.storage
    for rel in files.named(LOOP_STATE):
        where = Path(files.storage, files.name, rel) if local else io.BytesIO(files.read_bytes(rel))
        recipe = saved_recipe(where)
        if recipe is None:
            continue  # unreadable (a write cut short): says nothing of its recipe
        missing = knobs_missing(recipe)
        if missing:
            knob = next(iter(missing))
            commit = files.read_json("experiment.json").get("git_commit")
            raise ConfigError(
                f"--resume: {rel.split('/')[0]} trained before {knob} (commit "
                f"{ADDED_KNOBS[knob][0]}); the study's other trials would train with it: "
                f"resume with the commit that started the study ({commit or 'unrecorded'})"
            )


def started_fuse(files: StudyFiles) -> int | None:
    """The rows per fused group a study started with (0: none), from its ``experiment.json``;
    None where the record predates the choice's."""
    record = files.read_json("experiment.json")
    return None if "fuse" not in record else record["fuse"] or 0


def record_start(files: StudyFiles, exp: Experiment, preset: str, resources: Resources,
                 paths: Any, *, fuse: Any = None) -> None:  # fmt: skip
    """The resolved experiment, commit, versions, device and pooling, beside the results; the
    resources are what each trial holds (pooled: a client's CPU and no GPU, the pools a GPU each)."""
    held = vars(resources) if fuse is None else {"cpus_per_trial": CLIENT_CPUS,
                                                  "gpus_per_trial": 0.0, "gpus_per_pool": 1.0}  # fmt: skip
    files.write_json("experiment.json", {
        "experiment": exp.to_dict(), "preset": preset, "resources": held,
        "fuse": fuse.slots if fuse is not None else 0,
        "storage": paths.storage, "tracking_uri": paths.tracking_uri, **provenance(),
    })  # fmt: skip


def record_fuse(files: StudyFiles, slots: int) -> None:
    """A resumed pooled study's rows per group, kept for its later resumes (a pool out of memory
    resumes with fewer: ``--resume --fuse K``)."""
    record = files.read_json("experiment.json")
    if record.get("fuse") != slots:
        files.write_json("experiment.json", {**record, "fuse": slots})


def refuse_a_pooling_switch(files: StudyFiles, fuse: int | None) -> None:
    """``--resume --fuse K`` may change a pooled study's rows per group (a pool out of memory
    resumes with fewer), not pool a study of processes or the reverse: Tune restores each trial
    with the trainable it started with."""
    started = started_fuse(files)
    if started is None or fuse is None or (fuse == 0) == (started == 0):
        return
    how = f"with --fuse {started}" if started else "without a pool (--fuse 0)"
    raise ConfigError(f"--resume --fuse {fuse}: the study started {how} and Tune restores its "
                      f"trials as they started: drop --fuse"
                      + (", or give another --fuse K >= 1" if started else ""))  # fmt: skip


def check_resume(files: StudyFiles, fuse: int | None) -> None:
    """What ``--resume`` refuses before anything starts: a study of an older recipe, and a
    switch between pooled trials and processes (``fuse``: ``--fuse`` as given, or None)."""
    refuse_an_older_recipe(files)
    refuse_a_pooling_switch(files, fuse)
