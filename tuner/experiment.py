"""An experiment is a frozen dataclass; a preset is a short diff of it with reasons.

Experiments register themselves (``tuner/experiments/e*.py``) with :func:`register`; the CLI and
the tests iterate the registry through :func:`tuner.experiments.get_experiment` and
:func:`tuner.experiments.all_experiments`, which import every experiment first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from search_spaces.errors import ConfigError, one_of
from search_spaces.registry import Registry

PRESETS = ("smoke", "demo", "full")
SEARCH_KINDS = ("budget_split", "methods", "grid", "choices", "autopeft")
MODES = ("max", "min")
SCHEDULERS = ("asha", "fifo")


@dataclass(frozen=True)
class Search:
    """What the trials try.

    ``kind``: ``budget_split`` (the allocator's split of one budget between LoRA rank, adapter
    size and fusion sources), ``methods`` (each of ``methods`` matched to the budget, its
    learning rate tuned), ``grid`` (the explicit ``configs``, each repeated per seed),
    ``choices`` (a trial picks one of ``configs``, then its learning rate: sizes and rates
    selected on dev) or ``autopeft`` (per-layer module choices and sizes, against the baseline
    arms in ``configs``; ``sizes`` overrides the size grid).

    Arms of ``grid`` and ``choices`` are matched to the budget (an arm's own ``budget_params``
    wins over the study's) unless ``match_budget`` is False: then they run at the sizes they give.
    A ``grid`` arm that sets no ``lr`` runs at ``lr_points`` learning rates spread over its own
    method's range (``search_spaces.spaces.learning_rates``): the fair-arms rule of docs/STUDIES.md.
    """

    kind: str
    budget_params: int = 500_000
    tolerance: float = 0.05
    accounting: str = "trainable"
    sources: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    configs: tuple[Mapping[str, Any], ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)  # constant keys added to every trial
    match_budget: bool = True  # grid/choices arms: matched to the budget, or at their own sizes
    sizes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # autopeft size grid
    lr_points: int = 1  # grid arms without an lr: rates per arm over its method's range

    def __post_init__(self) -> None:
        if self.kind not in SEARCH_KINDS:
            raise one_of("search kind", self.kind, SEARCH_KINDS)
        if self.budget_params <= 0:
            raise ConfigError(f"budget_params={self.budget_params} must be > 0")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"tolerance={self.tolerance} must be in (0, 1)")
        if self.accounting not in ("trainable", "added"):
            raise one_of("accounting", self.accounting, ("trainable", "added"))
        if self.kind in ("grid", "choices") and not self.configs:
            raise ConfigError(f"a {self.kind} search needs configs")
        if type(self.lr_points) is not int or self.lr_points < 1:
            raise ConfigError(f"lr_points={self.lr_points!r} must be an integer >= 1")
        if self.kind == "methods" and not self.methods:
            raise ConfigError("a methods search needs methods")


@dataclass(frozen=True)
class Experiment:
    """One study: a task, what to search, how to stop trials early, and its presets."""

    name: str
    summary: str
    task: str
    search: Search
    backbone: str = "minilm-l6"
    head: str = "mean"
    objectives: tuple[tuple[str, str], ...] = (("dev_score", "max"),)
    num_samples: int = 16
    seeds: tuple[int, ...] = (0,)
    # the seeds phase re-runs each arm's best ``seeds_top`` configurations on dev on every seed,
    # and the tables choose among them on their mean dev over those seeds: a rate chosen on one
    # seed can diverge on another (STS-B, docs/STUDIES.md)
    seeds_top: int = 2
    grace_period: int = 1
    reduction_factor: int = 3
    train: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    train_samples: int | None = None  # subsample the honest train split (few-shot: stratified)
    extra_tests: tuple[str, ...] = ()  # further evaluation tasks, e.g. domain-shift sets
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    scheduler: str = "asha"  # "fifo": no early stopping (to measure what ASHA saves)
    fault: str | None = None  # testing aid: every trial's first attempt fails (raise@N / exit@N)
    # its trials' training time is a result: tuner.run does not pool it by itself (pooled trials
    # share the GPU's steps, and LoRA rows pad every placement to the study's widest); --fuse does
    timed: bool = False

    def __post_init__(self) -> None:
        if self.num_samples <= 0:
            raise ConfigError(f"num_samples={self.num_samples} must be > 0")
        if type(self.seeds_top) is not int or self.seeds_top < 1:
            raise ConfigError(f"seeds_top={self.seeds_top!r} must be an integer >= 1")
        if self.grace_period <= 0:
            raise ConfigError(f"grace_period={self.grace_period} must be > 0")
        for metric, mode in self.objectives:
            if mode not in MODES:
                raise one_of(f"mode of {metric}", mode, MODES)
        if self.scheduler not in SCHEDULERS:
            raise one_of("scheduler", self.scheduler, SCHEDULERS)
        unknown = sorted(set(self.presets) - set(PRESETS))
        if unknown:
            raise one_of("preset", unknown[0], PRESETS)
        if self.task in self.search.sources:
            raise ConfigError(own_task_source(self.task, self.search.sources))

    @property
    def metric(self) -> str:
        """The primary objective: what ASHA compares."""
        return self.objectives[0][0]

    @property
    def mode(self) -> str:
        return self.objectives[0][1]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def with_preset(self, preset: str) -> Experiment:
        """The experiment with a preset's overrides applied (``full`` = as written)."""
        if preset not in PRESETS:
            raise one_of("preset", preset, PRESETS)
        changes = dict(self.presets.get(preset, {}))
        search_changes = changes.pop("search", None)
        train_changes = changes.pop("train", None)
        exp = dataclasses.replace(self, **changes)
        if search_changes:
            exp = dataclasses.replace(exp, search=dataclasses.replace(exp.search, **search_changes))
        if train_changes:
            exp = dataclasses.replace(exp, train={**exp.train, **train_changes})
        return exp

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("presets")
        return data


# sources offered in place of the target task when a study names its own task as a source
SOURCE_TASKS = ("glue/sst2", "imdb", "newsgroups/bydate", "tweet_eval/sentiment")


def own_task_source(task: str, sources: tuple[str, ...]) -> str:
    """Why a fusion source may not be the target task, and sources to use instead: an adapter
    trained on the task's own train split (its dev carve included) would carry the target's
    labels into every trial and its dev score."""
    others = [s for s in sources if s != task]
    spare = [s for s in SOURCE_TASKS if s != task and s not in others][:1]
    return (
        f"source {task!r} is the study's own task: its adapter, trained on {task}'s train "
        f"split (dev rows included), would leak the target's labels into the fusion; name "
        f"others, e.g. --set sources={','.join([*others, *spare])}"
    )


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def register(experiment: Experiment) -> Experiment:
    return EXPERIMENTS.register(experiment.name, experiment)
