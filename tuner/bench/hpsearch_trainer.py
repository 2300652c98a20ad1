"""What each trial of the usual way runs: a study's flat config as a :class:`TrialPlan`, our
classifier as ``transformers.Trainer`` calls it, and the pieces ``Trainer.hyperparameter_search``
takes (``model_init``, the search space, the evaluation schedule, the metric).
:mod:`tuner.bench.hpsearch_baseline` runs the search.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune
from torch import nn
from transformers import TrainerCallback

from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from trainables.backbones import load_backbone
from trainables.inference import task_loss
from trainables.methods import build_model
from trainables.metrics import compute
from trainables.model import PeftClassifier
from trainables.prepared import PreparedData
from trainables.recipe import split_config
from trainables.source_store import check_intact
from trainables.train_config import TrainConfig
from tuner.bench.trial import features

# TrainingArguments set per trial through the search space, each from the trial's TrainConfig.
TRIAL_ARGS = ("learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
              "weight_decay", "warmup_steps", "max_steps", "num_train_epochs", "max_grad_norm",
              "seed")  # fmt: skip


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
        as our loop counts them. The head's own rate (``head_lr_scale``) is not among them: the
        Trainer, used the usual way, trains every parameter at ``learning_rate``."""
        t = self.train
        return {"learning_rate": t.lr, "per_device_train_batch_size": t.batch_size,
                "per_device_eval_batch_size": t.eval_batch_size, "weight_decay": t.weight_decay,
                "warmup_steps": t.warmup_steps(self.total_steps), "max_steps": self.total_steps,
                "num_train_epochs": t.epochs, "max_grad_norm": t.grad_clip, "seed": t.seed}  # fmt: skip


def plan_trials(configs: list[dict[str, Any]], data: PreparedData) -> list[TrialPlan]:
    """A plan per flat trial config, checked as ``run_trial`` checks it (bad configs: ConfigError)."""
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
        logits = self.model(input_ids, attention_mask, token_type_ids)
        if labels is None:
            return {"logits": logits}
        loss = task_loss(logits, labels, self.task_kind)
        extra = self.model.regularization_loss() if self.training else None
        return {"loss": loss if extra is None else loss + extra, "logits": logits}


def build_our_model(plan: TrialPlan) -> PeftClassifier:
    """The model ``run_trial`` builds for the config: same seed, backbone, adapters, step count."""
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
        return compute(self.metric, prediction.predictions, prediction.label_ids)


def dev_objective(metrics: dict[str, float]) -> float:
    """Trainer's ``compute_objective``: the dev score of the evaluation."""
    return float(metrics["eval_score"])


def trainer_rows(encoded: Any, task_kind: str) -> list[dict[str, Any]]:
    """``tuner.bench.trial.features`` rows, with float labels for regression (it casts to int)."""
    rows = features(encoded)
    if task_kind == "regression":
        for row, label in zip(rows, encoded.labels.tolist(), strict=True):
            row["labels"] = label
    return rows


__all__ = [
    "TRIAL_ARGS", "DevMetric", "HpSpace", "ModelInit", "StudySchedule", "TrainerModel",
    "TrialArg", "TrialPlan", "build_our_model", "dev_objective", "plan_trials", "trainer_rows",
]  # fmt: skip
