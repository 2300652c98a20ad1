"""From an experiment to its Optuna define-by-run space, built on the backbone's real shape.

Every space returns flat trial configs of public keys; the experiment adds its constant keys
(task, backbone, head, the fixed ``--set`` knobs, the training knobs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

from search_spaces.allocator import Lumps
from search_spaces.errors import ConfigError
from search_spaces.matching import Budget, Infeasible
from search_spaces.method_config import FUSION_METHODS
from search_spaces.shapes import BackboneShape
from search_spaces.spaces import (
    LR_RANGES,
    MethodSpace,
    MethodsSpace,
    budget_split_space,
    method_space,
)
from tuner.experiment import Experiment


@dataclass(frozen=True)
class GridSpace:
    """A fixed list of configurations, the i-th trial runs the i-th (cycling); nothing sampled."""

    configs: tuple[dict[str, Any], ...]

    def __call__(self, trial: Any) -> dict[str, Any]:
        ot_trial = getattr(trial, "ot_trial", trial)
        config = dict(self.configs[ot_trial.number % len(self.configs)])
        for key in ("budget_deviation", "tolerance"):
            ot_trial.set_user_attr(key, config.get(key))
        return config


@dataclass(frozen=True)
class ExperimentSpace:
    """The experiment's space plus the constant keys every trial carries."""

    inner: Any
    constants: dict[str, Any]
    source_bottlenecks: tuple[int, ...]  # source-adapter sizes the trials may fuse

    def __call__(self, trial: Any) -> dict[str, Any]:
        # A trial's own values (a grid arm's train_samples, a sampled lr) win over the study's
        # defaults, except a learning rate fixed with ``--set lr=...``.
        params = {**self.constants, **self.inner(trial)}
        if "lr" in self.constants:
            params["lr"] = self.constants["lr"]
        return params


def default_lr(method: str) -> float:
    """The geometric middle of the method's search range: the lr of a grid arm that sets none."""
    lo, hi = LR_RANGES[method]
    return float(f"{math.sqrt(lo * hi):.2g}")


def build_space(exp: Experiment) -> ExperimentSpace:
    """The experiment's space; an infeasible budget or unknown name fails here (exit 2)."""
    from trainables.backbones import load_backbone
    from trainables.data.loading import resolve_task

    task = resolve_task(exp.task)
    for source in exp.search.sources:
        resolve_task(source)
    shape = load_backbone(exp.backbone, meta=True).shape
    s = exp.search
    budget = Budget(budget_params=s.budget_params, tolerance=s.tolerance, accounting=s.accounting)
    fixed = {k: v for k, v in s.fixed.items()}
    common = {"num_labels": task.num_labels, "head": exp.head}
    if s.kind == "budget_split":
        lumps = Lumps(**fixed.pop("lumps", {}))
        inner: Any = budget_split_space(shape=shape, budget=budget, sources_pool=s.sources,
                                        lumps=lumps, **common)  # fmt: skip
        bottlenecks = tuple(sorted({p["bottleneck"] for p in inner.leaves.values()
                                    if p["method"] in FUSION_METHODS}))  # fmt: skip
    elif s.kind == "methods":
        inner = MethodsSpace(_method_spaces(s.methods, shape, budget, s.sources, common, fixed))
        bottlenecks = _bottlenecks(inner.spaces.values())
    else:
        inner = GridSpace(tuple(_grid_arm(arm, shape, budget, s.sources, common, fixed)
                                for arm in s.configs))  # fmt: skip
        bottlenecks = tuple(sorted({c["bottleneck"] for c in inner.configs
                                    if c["method"] in FUSION_METHODS}))  # fmt: skip
    constants = {"task": exp.task, "backbone": exp.backbone, "head": exp.head, **dict(exp.train)}
    if exp.train_samples is not None:
        constants.setdefault("train_samples", exp.train_samples)
    if exp.fault:
        constants["fault"] = exp.fault
    return ExperimentSpace(inner, constants, bottlenecks)


def _method_spaces(methods, shape, budget, sources, common, fixed) -> dict[str, MethodSpace]:
    spaces = {}
    reasons = []
    for method in methods:
        options = {**common, **_method_fixed(method, sources, fixed)}
        try:
            spaces[method] = method_space(method, shape=shape, budget=budget, **options)
        except Infeasible as exc:
            reasons.append(f"{method}: {exc}")
    if not spaces:
        raise ConfigError("no method fits the budget: " + "; ".join(reasons))
    return spaces


def _grid_arm(arm, shape: BackboneShape, budget, sources, common, fixed) -> dict[str, Any]:
    arm = dict(arm)
    method = arm.pop("method")
    extras = {k: arm.pop(k) for k in ("train_samples", "seed", "lr") if k in arm}
    options = {**common, **_method_fixed(method, sources, fixed), **arm}
    params = dict(method_space(method, shape=shape, budget=budget, **options).params)
    params["lr"] = extras.pop("lr", default_lr(method))
    return {**params, **extras}


def _method_fixed(method: str, sources: tuple[str, ...], fixed: dict[str, Any]) -> dict[str, Any]:
    options = dict(fixed)
    if method in FUSION_METHODS:
        options.setdefault("sources", sources)
    else:
        options.pop("sources", None)
    return options


def _bottlenecks(spaces: Any) -> tuple[int, ...]:
    return tuple(
        sorted({s.params["bottleneck"] for s in spaces if s.params["method"] in FUSION_METHODS})
    )


def first_configs(exp: Experiment, space: ExperimentSpace, *, n: int) -> list[dict[str, Any]]:
    """What the search would try first: the same sampler and seed, asked without training."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize" if mode == "max" else "minimize" for _, mode in exp.objectives]
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.TPESampler(seed=0))
    return [space(study.ask()) for _ in range(n)]
