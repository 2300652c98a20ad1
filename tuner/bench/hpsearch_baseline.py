"""The usual way, run: a study's trial configurations through ``transformers.Trainer.
hyperparameter_search(backend="ray")``, one trial per GPU or ``per_gpu`` trials sharing each
(``resources_per_trial={"gpu": 1 / per_gpu}``, Tune's fractional GPUs; under NVIDIA MPS when the
caller starts its daemon first), each trial's dev score and wall time read back from Ray Tune.
:mod:`tuner.bench.hpsearch` pairs them with the study's own trials.

What is the same on both sides and what is the usual way's own: see :mod:`tuner.bench.hpsearch`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.integrations import integration_utils

from search_spaces.errors import ConfigError
from trainables.backbones import load_backbone
from trainables.prepared import PreparedData, subsample
from tuner.bench.hpsearch_trainer import (
    DevMetric,
    HpSpace,
    ModelInit,
    StudySchedule,
    TrialPlan,
    dev_objective,
    plan_trials,
    trainer_rows,
)
from tuner.bench.search import load_study, per_gpu_hour, time_to_near
from tuner.runner import connect_ray

Log = Callable[[str], None]
# transformers 4.57.6 starts each Ray trial with ``ray.train.get_checkpoint()`` and reports with
# ``ray.train.report``. Ray 2.60 runs Ray Train V2 by default, whose versions of both raise
# DeprecationWarning inside a Tune function trainable (ray/train/v2/_internal/util.py,
# ``requires_train_worker(raise_in_tune_session=True)``): every trial fails before training.
# With Ray Train V1, Ray's documented way back (ray-project/ray#49454), both forward to
# ``ray.tune.get_checkpoint`` / ``ray.tune.report``. Set before Ray starts: the local cluster's
# trial workers inherit it.
RAY_TRAIN_V1 = ("RAY_TRAIN_V2_ENABLED", "0")
# Keys that are not part of what a trial trains: Tune's own (``__trial_index__`` of a Repeater)
# and the fault-injection testing aid.
BOOKKEEPING_KEYS = ("fault",)
# The config keys a paired trial is shown by (tuner.bench.hpsearch).
CONFIG_KNOBS = ("method", "rank", "placement", "bottleneck", "fusion", "fusion_layers", "sources",
                "lr", "seed")  # fmt: skip


# --- running the search ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineTrial:
    """One trial of the baseline: ``completed`` when every planned evaluation was reported."""

    index: int
    config: dict[str, Any]
    status: str  # completed | failed
    dev_score: float | None  # after the last evaluation
    wall_s: float | None  # Tune's time_total_s: trial start (model building) -> last report
    start: float | None  # wall clock (s)
    end: float | None


@dataclass(frozen=True)
class BaselineRun:
    trials: list[BaselineTrial]
    gpus: int  # GPUs used (CPU: slots), each running ``per_gpu`` trials at a time
    device: str
    wall_s: float  # first trial start -> last trial report
    driver_wall_s: float  # the searches as the driver saw them (Ray's trial start-up included)
    per_gpu: int = 1

    def time_to(self, target: float | None) -> float | None:
        """Seconds from the first trial's start to the end of the first completed trial whose
        dev score is within 0.5 points of ``target`` (:func:`tuner.bench.search.time_to_near`)."""
        starts = [t.start for t in self.trials if t.start is not None]
        finals = [(t.end - min(starts), t.dev_score) for t in self.trials
                  if t.status == "completed" and t.end is not None and t.dev_score is not None]  # fmt: skip
        return time_to_near(finals, target)

    @property
    def completed(self) -> int:
        return sum(t.status == "completed" for t in self.trials)

    @property
    def trials_per_gpu_hour(self) -> float | None:
        return per_gpu_hour(self.completed, self.wall_s, self.gpus)


def run_baseline(
    configs: list[dict[str, Any]],
    data: PreparedData,
    *,
    device: str,
    gpus: int,
    cpus_per_trial: float,
    storage: Path,
    log: Log,
    per_gpu: int = 1,
) -> BaselineRun:
    """Run ``configs`` on ``data`` with ``Trainer.hyperparameter_search`` on Ray Tune, one search
    per set of training rows (Trainer trains every trial of a search on one dataset). Ray must
    be connected (:func:`connect`); Tune's results go under ``storage``."""
    plans = plan_trials(configs, data)
    groups: dict[tuple[int, int] | None, list[TrialPlan]] = {}
    for plan in plans:
        groups.setdefault(plan.rows, []).append(plan)
    started = time.perf_counter()
    trials: list[BaselineTrial] = []
    for number, group in enumerate(groups.values()):
        name = f"hpsearch-{number}"
        log(f"hpsearch {name}: {len(group)} trial(s), {gpus * per_gpu} at a time on {device}"
            + (f" ({per_gpu} per GPU)" if per_gpu > 1 else ""))  # fmt: skip
        search(group, data, device=device, gpus=gpus, cpus_per_trial=cpus_per_trial,
               folder=storage / name, per_gpu=per_gpu)  # fmt: skip
        trials.extend(read_trials(storage / name, group))
    driver_wall_s = time.perf_counter() - started
    starts = [t.start for t in trials if t.start is not None]
    ends = [t.end for t in trials if t.end is not None]
    wall_s = max(ends) - min(starts) if starts else 0.0
    return BaselineRun(sorted(trials, key=lambda t: t.index), gpus, device, wall_s, driver_wall_s,
                       per_gpu)  # fmt: skip


def search(
    plans: list[TrialPlan],
    data: PreparedData,
    *,
    device: str,
    gpus: int,
    cpus_per_trial: float,
    folder: Path,
    per_gpu: int = 1,
) -> None:
    """One ``hyperparameter_search`` over ``plans`` (same training rows), results in ``folder``;
    ``gpus * per_gpu`` trials at a time, each ``1 / per_gpu`` of a GPU on CUDA."""
    first, cuda = plans[0], device.startswith("cuda")
    rows = first.rows
    train = subsample(data, rows[0], seed=rows[1]).train if rows else data.train
    resources = {"gpu": 1 / per_gpu, "cpu": cpus_per_trial} if cuda else {"cpu": cpus_per_trial}
    shutil.rmtree(folder, ignore_errors=True)  # a re-run replaces its Tune results, adds none
    with tempfile.TemporaryDirectory(prefix="peft-tune-hpsearch-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, eval_strategy="no", save_strategy="no", logging_strategy="no",
            report_to=[], disable_tqdm=True, bf16=cuda, use_cpu=not cuda,
            **first.trainer_args(),
        )  # fmt: skip
        trainer = Trainer(
            args=args, model_init=ModelInit({p.index: p for p in plans}, data.task_kind),
            train_dataset=trainer_rows(train, data.task_kind),
            eval_dataset=trainer_rows(data.dev, data.task_kind),
            data_collator=DataCollatorWithPadding(load_backbone(first.backbone, meta=True).tokenizer),
            compute_metrics=DevMetric(data.metric),
            callbacks=[StudySchedule({p.index: p.eval_steps for p in plans})],
        )  # fmt: skip
        with datasets_modules_skipped():
            trainer.hyperparameter_search(
                hp_space=HpSpace(tuple(plans)), compute_objective=dev_objective, n_trials=1,
                direction="maximize", backend="ray", resources_per_trial=resources,
                max_concurrent_trials=gpus * per_gpu, name=folder.name, storage_path=str(folder.parent),
                verbose=0, raise_on_failed_trial=False,
            )  # fmt: skip


@contextmanager
def datasets_modules_skipped() -> Iterator[None]:
    """transformers 4.57.6 wraps each Ray trial in ``dynamic_modules_import_trainable``, which
    calls ``datasets.load.init_dynamic_modules()`` where its module-level
    ``is_datasets_available()`` holds; datasets 4 removed that function with dataset scripts, so
    every trial fails with AttributeError (huggingface/transformers#42147, open). Tune pickles the
    wrapper with the globals it reads as they are when ``tune.run`` starts: inside this block the
    wrapper sees :func:`has_datasets_modules` instead, and loads dynamic modules only where the
    installed datasets still has them. The rows here are plain lists: no dataset modules at all."""
    before = integration_utils.is_datasets_available
    integration_utils.is_datasets_available = has_datasets_modules
    try:
        yield
    finally:
        integration_utils.is_datasets_available = before


def has_datasets_modules() -> bool:
    """Whether ``datasets`` is installed and still has dynamic modules (< 4.0)."""
    try:  # optional: datasets is not a dependency of the project, only of some installs
        import datasets.load
    except ImportError:
        return False
    return hasattr(datasets.load, "init_dynamic_modules")


def read_trials(folder: Path, plans: list[TrialPlan]) -> list[BaselineTrial]:
    """The baseline's trials from Tune's result files; a trial without every evaluation failed."""
    reported = {int(t.config["trial_index"]): t for t in load_study(folder)}
    out = []
    for plan in plans:
        history = reported.get(plan.index)
        if history is None:
            out.append(BaselineTrial(plan.index, plan.config, "failed", None, None, None, None))
            continue
        done = len(history.reports) == len(plan.eval_steps)
        last = history.reports[-1]
        out.append(BaselineTrial(
            plan.index, plan.config, "completed" if done else "failed",
            float(last["eval_score"]) if done else None, float(last["time_total_s"]),
            history.start, history.end,
        ))  # fmt: skip
    return out


def connect(*, cpus_per_trial: float) -> float:
    """Ray for the baseline (``tuner.runner.connect_ray``: a local cluster on loopback unless
    RAY_ADDRESS names one), with Ray Train V1 for transformers' reports; returns its GPU count."""
    key, value = RAY_TRAIN_V1
    if os.environ.get("RAY_ADDRESS") and os.environ.get(key) != value:
        raise ConfigError(f"transformers' Ray trials need {key}={value} on every worker: submit "
                          f"the job with --runtime-env-json '{{\"env_vars\": {{\"{key}\": "
                          f"\"{value}\"}}}}'")  # fmt: skip
    os.environ[key] = value
    return connect_ray(cpus_per_trial=cpus_per_trial)


__all__ = [
    "BOOKKEEPING_KEYS", "CONFIG_KNOBS", "RAY_TRAIN_V1", "BaselineRun", "BaselineTrial", "Log",
    "connect", "datasets_modules_skipped", "has_datasets_modules", "read_trials", "run_baseline",
    "search",
]  # fmt: skip
