"""From an experiment to its Optuna define-by-run space, built on the backbone's real shape.

Every space returns flat trial configs of public keys; the experiment adds its constant keys
(task, backbone, head, the fixed ``--set`` knobs, the training knobs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from search_spaces.allocator import Lumps
from search_spaces.autopeft_space import autopeft_space
from search_spaces.errors import ConfigError
from search_spaces.matching import Budget, Infeasible
from search_spaces.method_config import FUSION_METHODS
from search_spaces.shapes import BackboneShape
from search_spaces.spaces import (
    MethodSpace,
    MethodsSpace,
    budget_split_space,
    learning_rates,
    method_space,
    startup_trials,
)
from trainables.train_config import TrainConfig
from tuner.experiment import Experiment
from tuner.reconcile import killed_before


@dataclass(frozen=True)
class GridSpace:
    """A fixed list of configurations, the i-th trial runs the i-th (cycling); nothing sampled.
    Trials that a killed driver lost (told FAIL on ``--resume``) are not counted: their arms run."""

    configs: tuple[dict[str, Any], ...]

    def __call__(self, trial: Any) -> dict[str, Any]:
        ot_trial = getattr(trial, "ot_trial", trial)
        index = ot_trial.number - killed_before(ot_trial)
        config = dict(self.configs[index % len(self.configs)])
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
        if params.get("fault"):  # testing aid: a targeted fault (exit@2:trial=1) reaches one trial
            from trainables.faults import fault_for_trial

            fault = fault_for_trial(params.pop("fault"), getattr(trial, "ot_trial", trial).number)
            params.update({"fault": fault} if fault else {})
        return params


def train_sizes(space: ExperimentSpace) -> tuple[int, ...]:
    """The training subsets (``train_samples``) a grid's arms draw, e.g. E2's 128 .. 5,000."""
    configs = getattr(space.inner, "configs", ())
    return tuple(sorted({int(c["train_samples"]) for c in configs if c.get("train_samples")}))


def startup_points(space: ExperimentSpace, n: int, *, seed: int) -> list[dict[str, Any]]:
    """What the search enqueues for its start-up (a budget split's stratified splits), else []."""
    inner = getattr(space.inner, "startup_points", None)
    return inner(n, seed=seed) if inner is not None else []


def build_space(exp: Experiment) -> ExperimentSpace:
    """The experiment's space; an infeasible budget or unknown name fails here (exit 2)."""
    from trainables.backbones import load_backbone
    from trainables.data.loading import resolve_task

    task = resolve_task(exp.task)
    for source in exp.search.sources:
        resolve_task(source)
    shape = load_backbone(exp.backbone, meta=True).shape
    shape.check_max_length(TrainConfig.from_dict(dict(exp.train)).max_length, exp.backbone)
    s = exp.search
    budget = Budget(budget_params=s.budget_params, tolerance=s.tolerance, accounting=s.accounting)
    fixed = {k: v for k, v in s.fixed.items()}
    common = {"num_labels": task.num_labels, "head": exp.head}
    if s.kind == "budget_split":
        lumps = Lumps(**{**fixed.pop("lumps", {}), **split_lumps(fixed)})
        inner: Any = budget_split_space(shape=shape, budget=budget, sources_pool=s.sources,
                                        lumps=lumps, **common)  # fmt: skip
        bottlenecks = tuple(sorted({p["bottleneck"] for p in inner.leaves.values()
                                    if p["method"] in FUSION_METHODS}))  # fmt: skip
    elif s.kind == "methods":
        inner = MethodsSpace(_method_spaces(s.methods, shape, budget, s.sources, common, fixed))
        bottlenecks = _bottlenecks(inner.spaces.values())
    elif s.kind in ("choices", "autopeft"):
        arms = Arms(shape, budget if s.match_budget else None, s.sources, common, fixed,
                    target=exp.task, backbone=exp.backbone)  # fmt: skip
        spaces = {arm_label(a): arms.space(a) for a in s.configs}
        inner = ChoicesSpace(spaces) if s.kind == "choices" else autopeft_space(
            shape=shape, baselines=spaces, sizes=s.sizes, **common, **fixed)  # fmt: skip
        bottlenecks = _bottlenecks(spaces.values())
    else:
        arms = Arms(shape, budget if s.match_budget else None, s.sources, common, fixed,
                    target=exp.task, backbone=exp.backbone)  # fmt: skip
        inner = GridSpace(tuple(arms.grid_arm(arm, lr) for arm in s.configs
                                for lr in arm_rates(arm, s.lr_points)))  # fmt: skip
        bottlenecks = tuple(sorted({c["bottleneck"] for c in inner.configs
                                    if c["method"] in FUSION_METHODS}))  # fmt: skip
    constants = {"task": exp.task, "backbone": exp.backbone, "head": exp.head, **dict(exp.train)}
    if exp.train_samples is not None:
        constants.setdefault("train_samples", exp.train_samples)
    if exp.fault:
        constants["fault"] = exp.fault
    return ExperimentSpace(inner, constants, bottlenecks)


# The ``--set`` knobs a budget_split search takes, each fixing one lump; the allocator sets the rest.
SPLIT_KNOBS = {"method": "methods", "fusion": "fusions", "placement": "placements",
               "bottleneck": "bottlenecks", "target_bottleneck": "target_bottlenecks"}  # fmt: skip


def split_lumps(fixed: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    """Fixed method knobs of a budget_split search as the lumps they pin, e.g. ``{"fusion":
    "static"}`` -> ``{"fusions": ("static",)}``; a knob the allocator sets itself is refused."""
    for key, value in fixed.items():
        if key not in SPLIT_KNOBS:
            raise ConfigError(
                f"{key}={value!r} cannot be fixed in a budget_split search (the allocator sets it "
                f"to fit the budget); knobs it takes: {', '.join(SPLIT_KNOBS)}"
            )
    return {SPLIT_KNOBS[key]: (value,) for key, value in fixed.items()}


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


@dataclass(frozen=True)
class Arms:
    """Turns the arms of a grid/choices/autopeft search into method spaces.

    An arm is a dict of MethodConfig knobs plus optional ``train_samples``, ``seed``, ``lr`` and
    ``budget_params`` (its own budget, same tolerance). ``budget=None``: arms keep their sizes.
    ``fusion_init="similarity"`` arms get ``source_similarity`` measured here, from the data.
    """

    shape: BackboneShape
    budget: Budget | None
    sources: tuple[str, ...]
    common: dict[str, Any]
    fixed: dict[str, Any]
    target: str
    backbone: str

    def space(self, arm: Mapping[str, Any]) -> MethodSpace:
        arm = {k: v for k, v in arm.items() if k not in ("train_samples", "seed", "lr")}
        method = arm.pop("method")
        budget = self.budget
        if "budget_params" in arm:
            arm_budget = arm.pop("budget_params")
            if budget is not None:
                budget = dataclasses.replace(budget, budget_params=arm_budget)
        options = {**self.common, **_method_fixed(method, self.sources, self.fixed), **arm}
        if options.get("fusion_init") == "similarity" and options.get("source_similarity") is None:
            options["source_similarity"] = self.similarity(tuple(options["sources"]))
        return method_space(method, shape=self.shape, budget=budget, **options)

    def grid_arm(self, arm: Mapping[str, Any], lr: float) -> dict[str, Any]:
        params = {**self.space(arm).params, "lr": lr}
        return {**params, **{k: arm[k] for k in ("train_samples", "seed") if k in arm}}

    def similarity(self, sources: tuple[str, ...]) -> tuple[float, ...]:
        from trainables.similarity import source_similarity

        return source_similarity(self.target, sources, self.backbone)


def arm_rates(arm: Mapping[str, Any], n: int) -> tuple[float, ...]:
    """The learning rates a grid arm runs at: its own ``lr``, else ``n`` over its method's range."""
    return (arm["lr"],) if "lr" in arm else learning_rates(arm["method"], n)


def grid_size(exp: Experiment) -> int:
    """How many trials a grid experiment's search phase holds: arms times their rates."""
    return sum(len(arm_rates(arm, exp.search.lr_points)) for arm in exp.search.configs)


def arm_label(arm: Mapping[str, Any]) -> str:
    """A short name of an arm for Optuna's ``arm`` choice, e.g. ``lora rank=4``."""
    knobs = " ".join(f"{k}={_text(v)}" for k, v in arm.items() if k != "method")
    return f"{arm['method']} {knobs}".strip()


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


@dataclass(frozen=True)
class ChoicesSpace:
    """A trial picks one arm (``arm``), then that arm's learning rate (``lr[method]``)."""

    arms: dict[str, MethodSpace]

    def __call__(self, trial: Any) -> dict[str, Any]:
        labels = tuple(self.arms)
        ot_trial = getattr(trial, "ot_trial", trial)
        label = labels[0] if len(labels) == 1 else ot_trial.suggest_categorical("arm", labels)
        return self.arms[label](trial)

    def describe(self) -> str:
        return "\n".join(f"{label}: {space.describe()}" for label, space in self.arms.items())


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
    for point in startup_points(space, min(n, startup_trials(exp.num_samples)), seed=0):
        study.enqueue_trial(point)
    return [space(study.ask()) for _ in range(n)]
