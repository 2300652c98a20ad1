"""Optuna define-by-run search spaces in which every sample is inside the parameter budget.

``budget_split_space`` (:mod:`search_spaces.split_space`) samples every feasible split of the
budget; ``method_space`` samples the learning rate of one method matched to the budget
(:mod:`matching`), ``methods_space`` the method first (experiment E1).

All are picklable callables for ``OptunaSearch(space=...)`` or ``study.optimize``. They return a
flat, JSON-able dict of the project's public keys (:func:`trial_params`, in
:mod:`search_spaces.params`), nothing else: the lumps are suggested on the underlying Optuna
trial, not through Ray's capturing wrapper, so the trial's config holds no internal names (the
trainable refuses unknown keys). This module is the public face of the spaces; ``python -m
search_spaces.spaces`` runs :mod:`search_spaces.spaces_demo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search_spaces.accounting import count_params
from search_spaces.errors import ConfigError
from search_spaces.matching import KNOBS, Budget, match_budget
from search_spaces.method_config import MethodConfig
from search_spaces.params import (
    BUDGET_KEYS,
    CONSTRAINT,
    COUNT_KEYS,
    KNOBS_USED,
    LR_RANGES,
    METHOD_KEYS,
    constraints,
    default_lr,
    finish_params,
    learning_rates,
    method_config_from_params,
    optuna_trial,
    outside_budget,
    trial_params,
)
from search_spaces.shapes import BackboneShape
from search_spaces.spaces_demo import DEMO_BUDGET, DEMO_SOURCES, main, synthetic_score
from search_spaces.split_space import BudgetSplitSpace, budget_split_space, startup_trials


@dataclass(frozen=True)
class MethodSpace:
    """One method at its matched configuration; trials sample the learning rate only."""

    params: dict[str, Any]  # trial params without lr
    lr_range: tuple[float, float]
    lr_name: str = "lr"  # the Optuna name; per method inside a MethodsSpace

    def __call__(self, trial: Any) -> dict[str, Any]:
        return finish_params(optuna_trial(trial), dict(self.params), self.lr_range, self.lr_name)

    def constraints_func(self, trial: Any) -> list[float]:
        return constraints(trial)

    def describe(self) -> str:
        knobs = {k: v for k, v in self.params.items() if v is not None}
        lo, hi = self.lr_range
        return f"{knobs}; lr {lo:g} .. {hi:g} (log)"


def method_space(
    method: str,
    *,
    shape: BackboneShape,
    budget: Budget | None,
    lr_range: tuple[float, float] | None = None,
    num_labels: int = 2,
    head: str = "mean",
    **fixed: Any,
) -> MethodSpace:
    """``method`` matched to ``budget`` (``None``: at ``fixed`` as given), tuning ``lr``.

    ``full`` and ``bitfit`` have no knob: they keep their fixed size, their params show its true
    deviation and ``tolerance=None`` (the budget does not constrain them). Raises ``Infeasible``
    when a method with a knob cannot be matched.
    """
    lo, hi = lr_range or LR_RANGES[method]
    if not 0 < lo < hi:
        raise ConfigError(f"lr_range=({lo!r}, {hi!r}) must satisfy 0 < low < high")
    options = {"num_labels": num_labels, "head": head, **fixed}
    if budget is None or KNOBS.get(method, "") is None:
        config = MethodConfig(method=method, **options)
    else:
        config = match_budget(method, budget, shape, **options)
    params = trial_params(config, count_params(config, shape), budget)
    if budget is not None and not budget.contains(count_params(config, shape)):
        params["tolerance"] = None  # a baseline without a knob, reported at its true size
    return MethodSpace(params, (lo, hi), f"lr[{method}]")


@dataclass(frozen=True)
class MethodsSpace:
    """Several methods, each at its matched configuration: trials sample the method, then its
    learning rate (experiment E1)."""

    spaces: dict[str, MethodSpace]

    def __call__(self, trial: Any) -> dict[str, Any]:
        methods = tuple(self.spaces)
        method = optuna_trial(trial).suggest_categorical("method", methods)
        return self.spaces[method](trial)

    def constraints_func(self, trial: Any) -> list[float]:
        return constraints(trial)

    def describe(self) -> str:
        return "\n".join(f"{m}: {space.describe()}" for m, space in self.spaces.items())


def methods_space(
    methods: tuple[str, ...], *, shape: BackboneShape, budget: Budget | None, **options: Any
) -> MethodsSpace:
    """:func:`method_space` of each of ``methods`` (``options`` go to each: sources, head...)."""
    if not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"methods={methods!r} must name each method once")
    return MethodsSpace(
        {m: method_space(m, shape=shape, budget=budget, **options) for m in methods}
    )


__all__ = [
    "BUDGET_KEYS", "CONSTRAINT", "COUNT_KEYS", "DEMO_BUDGET", "DEMO_SOURCES", "KNOBS_USED",
    "LR_RANGES", "METHOD_KEYS", "BudgetSplitSpace", "MethodSpace", "MethodsSpace",
    "budget_split_space", "constraints", "default_lr", "finish_params", "learning_rates",
    "method_config_from_params", "method_space", "methods_space", "optuna_trial", "outside_budget",
    "startup_trials", "synthetic_score", "trial_params",
]  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(main())
