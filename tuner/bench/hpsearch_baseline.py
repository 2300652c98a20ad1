"""The usual way, run: a study's trial configurations through ``transformers.Trainer.
hyperparameter_search(backend="ray")``, one trial per GPU, each trial's dev score and wall time
read back from Ray Tune. :mod:`tuner.bench.hpsearch` pairs them with the study's own trials.

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

import torch
from torch import nn
from transformers import TrainerCallback

from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from trainables.model import PeftClassifier
from trainables.prepared import PreparedData
from trainables.train_config import TrainConfig
from tuner.bench.search import load_study, per_gpu_hour

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
# TrainingArguments set per trial through the search space, each from the trial's TrainConfig.
TRIAL_ARGS = ("learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
              "weight_decay", "warmup_steps", "max_steps", "num_train_epochs", "max_grad_norm",
              "seed")  # fmt: skip
CONFIG_KNOBS = ("method", "rank", "placement", "bottleneck", "fusion", "fusion_layers", "sources",
                "lr", "seed")  # fmt: skip


# --- what each trial runs --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialPlan:
    """One configuration as the baseline runs it: our method and loop configs, its training rows
    (``rows``: the trial's own ``(train_samples, seed)`` subsample, None for all the data), step
    count, evaluation steps and source adapters."""

    index: int
    config: dict[str, Any]
    method: MethodConfig
    train: TrainConfig
    rows: tuple[int, int] | None
    total_steps: int
    eval_steps: tuple[int, ...]
    adapters: dict[str, Path] | None

    @property
    def backbone(self) -> str:
        return str(self.config.get("backbone", "minilm-l6"))  # run_trial's default

    def trainer_args(self) -> dict[str, Any]:
        """The trial's TrainingArguments: the loop's knobs, with warm-up and total steps counted
        as our loop counts them."""
        t = self.train
        return {"learning_rate": t.lr, "per_device_train_batch_size": t.batch_size,
                "per_device_eval_batch_size": t.eval_batch_size, "weight_decay": t.weight_decay,
                "warmup_steps": t.warmup_steps(self.total_steps), "max_steps": self.total_steps,
                "num_train_epochs": t.epochs, "max_grad_norm": t.grad_clip, "seed": t.seed}  # fmt: skip


def plan_trials(configs: list[dict[str, Any]], data: PreparedData) -> list[TrialPlan]:
    """A plan per flat trial config, checked as ``run_trial`` checks it (bad configs: ConfigError)."""
    from trainables.recipe import split_config

    plans = []
    for index, config in enumerate(configs):
        method, train = split_config(config, num_labels=data.num_labels)
        k = config.get("train_samples")
        rows = (int(k), train.seed) if k is not None and k < len(data.train) else None
        total = train.total_steps(rows[0] if rows else len(data.train))
        plans.append(TrialPlan(index, dict(config), method, train, rows, total,
                               train.eval_steps(total), data.adapters_for(method.bottleneck)))  # fmt: skip
    backbones = sorted({p.backbone for p in plans})
    if len(backbones) > 1:
        raise ConfigError(f"the configs use backbones {', '.join(backbones)}; the data is "
                          "tokenised for one: pass the configs of one study")  # fmt: skip
    return plans


class TrainerModel(nn.Module):
    """Our classifier as Trainer calls it: keyword inputs and ``labels`` in, ``{"loss", "logits"}``
    out; the loss is our loop's (cross-entropy or MSE, plus the method's regularisation term while
    training). Trainer's optimizer sees the parameters with ``requires_grad`` only
    (``Trainer.create_optimizer`` filters them), as ours does."""

    def __init__(self, model: PeftClassifier, task_kind: str) -> None:
        super().__init__()
        self.model = model
        self.task_kind = task_kind

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        from trainables.inference import task_loss

        logits = self.model(input_ids, attention_mask, token_type_ids)
        if labels is None:
            return {"logits": logits}
        loss = task_loss(logits, labels, self.task_kind)
        extra = self.model.regularization_loss() if self.training else None
        return {"loss": loss if extra is None else loss + extra, "logits": logits}


def build_our_model(plan: TrialPlan) -> PeftClassifier:
    """The model ``run_trial`` builds for the config: same seed, backbone, adapters, step count."""
    from trainables.backbones import load_backbone
    from trainables.methods import build_model
    from trainables.source_store import check_intact

    torch.manual_seed(plan.train.seed)
    backbone = load_backbone(plan.backbone)
    for folder in (plan.adapters or {}).values():
        check_intact(folder)
    return build_model(
        plan.method, backbone, source_adapters=plan.adapters, total_steps=plan.total_steps
    )


@dataclass(frozen=True)
class ModelInit:
    """Trainer's ``model_init``: our model for the trial's config. ``trial`` is the trial's Ray
    config; Trainer also calls it once with None before the search (the first plan's model)."""

    plans: dict[int, TrialPlan]
    task_kind: str

    def __call__(self, trial: dict[str, Any] | None) -> TrainerModel:
        index = min(self.plans) if trial is None else int(trial["trial_index"])
        return TrainerModel(build_our_model(self.plans[index]), self.task_kind)


@dataclass(frozen=True)
class TrialArg:
    """A ``tune.sample_from`` of the search space: one TrainingArguments field of the trial that
    ``trial_index`` picks (Trainer sets the fields of a trial's config on its arguments)."""

    key: str
    values: dict[int, Any]

    def __call__(self, config: dict[str, Any]) -> Any:
        return self.values[config["trial_index"]]


@dataclass(frozen=True)
class HpSpace:
    """The search space: a grid over the plans' indices, each trial's TrainingArguments derived."""

    plans: tuple[TrialPlan, ...]

    def __call__(self, trial: Any) -> dict[str, Any]:
        from ray import tune

        args = {p.index: p.trainer_args() for p in self.plans}
        derived = {key: tune.sample_from(TrialArg(key, {i: a[key] for i, a in args.items()}))
                   for key in TRIAL_ARGS}  # fmt: skip
        return {"trial_index": tune.grid_search(sorted(args)), **derived}


class StudySchedule(TrainerCallback):
    """Trainer evaluating where our loop does: after the trial's ``eval_steps`` (the last one at
    its last step), calling the method's ``step_hook`` after each optimiser step and its
    ``plateau_hook`` with each dev loss."""

    def __init__(self, eval_steps: dict[int, tuple[int, ...]]) -> None:
        self.eval_steps = eval_steps

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        kwargs["model"].model.step_hook(state.global_step)  # 0-based index of the step just taken

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step in self.eval_steps[int(state.trial_params["trial_index"])]:
            control.should_evaluate = True

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        kwargs["model"].model.plateau_hook(kwargs["metrics"]["eval_loss"])


@dataclass(frozen=True)
class DevMetric:
    """Trainer's ``compute_metrics``: the task's metric (``eval_score`` and its components)."""

    metric: str

    def __call__(self, prediction: Any) -> dict[str, float]:
        from trainables.metrics import compute

        return compute(self.metric, prediction.predictions, prediction.label_ids)


def dev_objective(metrics: dict[str, float]) -> float:
    """Trainer's ``compute_objective``: the dev score of the evaluation."""
    return float(metrics["eval_score"])


def trainer_rows(encoded: Any, task_kind: str) -> list[dict[str, Any]]:
    """``tuner.bench.trial.features`` rows, with float labels for regression (it casts to int)."""
    from tuner.bench.trial import features

    rows = features(encoded)
    if task_kind == "regression":
        for row, label in zip(rows, encoded.labels.tolist(), strict=True):
            row["labels"] = label
    return rows


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
    gpus: int  # trials at a time, one GPU each (CPU: one slot each)
    device: str
    wall_s: float  # first trial start -> last trial report
    driver_wall_s: float  # the searches as the driver saw them (Ray's trial start-up included)

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
        log(f"hpsearch {name}: {len(group)} trial(s), {gpus} at a time on {device}")
        search(group, data, device=device, gpus=gpus, cpus_per_trial=cpus_per_trial,
               folder=storage / name)  # fmt: skip
        trials.extend(read_trials(storage / name, group))
    driver_wall_s = time.perf_counter() - started
    starts = [t.start for t in trials if t.start is not None]
    ends = [t.end for t in trials if t.end is not None]
    wall_s = max(ends) - min(starts) if starts else 0.0
    return BaselineRun(sorted(trials, key=lambda t: t.index), gpus, device, wall_s, driver_wall_s)


def search(
    plans: list[TrialPlan],
    data: PreparedData,
    *,
    device: str,
    gpus: int,
    cpus_per_trial: float,
    folder: Path,
) -> None:
    """One ``hyperparameter_search`` over ``plans`` (same training rows), results in ``folder``."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from trainables.backbones import load_backbone
    from trainables.prepared import subsample

    first, cuda = plans[0], device.startswith("cuda")
    rows = first.rows
    train = subsample(data, rows[0], seed=rows[1]).train if rows else data.train
    resources = {"gpu": 1, "cpu": cpus_per_trial} if cuda else {"cpu": cpus_per_trial}
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
                max_concurrent_trials=gpus, name=folder.name, storage_path=str(folder.parent),
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
    from transformers.integrations import integration_utils

    before = integration_utils.is_datasets_available
    integration_utils.is_datasets_available = has_datasets_modules
    try:
        yield
    finally:
        integration_utils.is_datasets_available = before


def has_datasets_modules() -> bool:
    """Whether ``datasets`` is installed and still has dynamic modules (< 4.0)."""
    try:
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
    from tuner.runner import connect_ray

    key, value = RAY_TRAIN_V1
    if os.environ.get("RAY_ADDRESS") and os.environ.get(key) != value:
        raise ConfigError(f"transformers' Ray trials need {key}={value} on every worker: submit "
                          f"the job with --runtime-env-json '{{\"env_vars\": {{\"{key}\": "
                          f"\"{value}\"}}}}'")  # fmt: skip
    os.environ[key] = value
    return connect_ray(cpus_per_trial=cpus_per_trial)


# --- our study, its data, and the pairing ----------------------------------------------------------
