"""The flat params of one trial and the learning rates of each method.

A trial's config is a flat, JSON-able dict of the project's public keys (:func:`trial_params`):
the method's knobs (those it does not read are None), its budget and its counts, and ``lr``.
Each method's rate range and the knobs it reads are its facts
(:mod:`search_spaces.method_facts`); ``LR_RANGES`` and ``KNOBS_USED`` are views of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from search_spaces.accounting import ParamCount
from search_spaces.errors import ConfigError
from search_spaces.matching import Budget
from search_spaces.method_config import METHODS, MethodConfig
from search_spaces.method_facts import METHOD_FACTS

# method -> (low, high) learning rate, sampled log-uniformly (each range cites its source in
# search_spaces/catalog.py)
LR_RANGES: dict[str, tuple[float, float]] = {m: METHOD_FACTS.get(m).lr_range for m in METHODS}


def learning_rates(method: str, n: int = 1) -> tuple[float, ...]:
    """``n`` rates over the method's own search range (``LR_RANGES``), log-evenly: the middle of
    each n-th of the range in log space, two significant digits. ``n=1`` is its geometric middle;
    ``n=4`` on LoRA's 1e-4..1e-2 is 1.8e-4, 5.6e-4, 1.8e-3, 5.6e-3. The rates of a grid arm that sets none."""
    lo, hi = LR_RANGES[method]
    span = math.log(hi / lo)
    return tuple(float(f"{lo * math.exp(span * (i + 0.5) / n):.2g}") for i in range(n))


def default_lr(method: str) -> float:
    """The geometric middle of the method's range: the rate of a trial config that sets none."""
    return learning_rates(method)[0]


# The knobs each method reads; the others are None in a trial's params, so MLflow shows no
# knob that had no effect.
KNOBS_USED: dict[str, tuple[str, ...]] = {m: METHOD_FACTS.get(m).knobs for m in METHODS}
# MethodConfig fields a trial's params carry (num_labels and head come from the task).
METHOD_KEYS = tuple(f.name for f in fields(MethodConfig) if f.name not in ("num_labels", "head"))
BUDGET_KEYS = ("budget_params", "tolerance", "accounting")
COUNT_KEYS = ("trainable_params", "added_params", "budget_deviation")
CONSTRAINT = "budget_deviation_excess"  # |deviation| - tolerance, <= 0 inside the budget


def trial_params(config: MethodConfig, count: ParamCount, budget: Budget | None) -> dict[str, Any]:
    """The flat, JSON-able params of one trial: knobs (unused ones None), budget and counts.

    Tuples become comma-separated strings; ``lr`` is added by the space.
    """
    used = KNOBS_USED[config.method]
    params: dict[str, Any] = {}
    for key in METHOD_KEYS:
        value = getattr(config, key) if key == "method" or key in used else None
        params[key] = ",".join(map(str, value)) if isinstance(value, tuple) else value
    params.update(dict.fromkeys(BUDGET_KEYS))
    params.update(trainable_params=count.trainable_params, added_params=count.added_params)
    params["budget_deviation"] = None
    if budget is not None:
        params.update(budget_params=budget.budget_params, tolerance=budget.tolerance)
        params.update(accounting=budget.accounting, budget_deviation=budget.deviation(count))
    return params


def method_config_from_params(
    params: Mapping[str, Any], *, num_labels: int, head: str
) -> MethodConfig:
    """The MethodConfig of a trial's params; non-method keys and None values are ignored."""
    known = {k: v for k, v in params.items() if k in METHOD_KEYS and v is not None}
    # layer_ranks is parsed here: coerce() reads tuple[int] fields as sorted sets of layer indices
    ranks = known.pop("layer_ranks", None)
    config = MethodConfig.from_dict({**known, "num_labels": num_labels, "head": head})
    if ranks is None:
        return config
    items = ranks.split(",") if isinstance(ranks, str) else ranks
    try:
        return config.replace(layer_ranks=tuple(int(r) for r in items))
    except ValueError:
        raise ConfigError(f"layer_ranks={ranks!r} must be comma-separated integers") from None


def constraints(params: Any) -> list[float]:
    """``[|budget_deviation| - tolerance]``: <= 0 inside the budget; ``[0.0]`` without a budget.

    Takes a trial's params or an Optuna ``FrozenTrial`` (the spaces store both figures in its
    user attributes), so it serves as ``TPESampler(constraints_func=constraints)``. On Optuna >= 5
    the spaces also set it on the trial (``Trial.set_constraint``), where samplers read it.
    """
    source = getattr(params, "user_attrs", params)
    if "budget_deviation" not in source or "tolerance" not in source:
        raise ConfigError("constraints() needs budget_deviation and tolerance (params of a space)")
    deviation, tolerance = source["budget_deviation"], source["tolerance"]
    if deviation is None or tolerance is None:
        return [0.0]
    return [abs(deviation) - tolerance]


def outside_budget(config: dict[str, Any]) -> bool:
    """A trial config whose counted parameters miss its budget by more than the tolerance
    (a config without a budget is never outside it)."""
    if config.get("budget_deviation") is None or config.get("tolerance") is None:
        return False
    return constraints(config)[0] > 1e-12


def optuna_trial(trial: Any) -> Any:
    """The Optuna trial under Ray's ``_OptunaTrialSuggestCaptor``, which would copy every
    suggested name into the trial's config; a plain Optuna trial is returned as it is."""
    return getattr(trial, "ot_trial", trial)


def finish_params(
    trial: Any, params: dict[str, Any], lr_range: tuple[float, float], name: str
) -> dict:
    """Sample ``lr`` and record the budget figures on the Optuna trial for constraint handling."""
    params["lr"] = trial.suggest_float(name, *lr_range, log=True)
    for key in ("budget_deviation", "tolerance"):
        trial.set_user_attr(key, params[key])
    if hasattr(trial, "set_constraint"):  # Optuna >= 5 reads constraints from the trial itself
        trial.set_constraint(CONSTRAINT, constraints(params)[0])
    return params


__all__ = [
    "BUDGET_KEYS", "CONSTRAINT", "COUNT_KEYS", "KNOBS_USED", "LR_RANGES", "METHOD_KEYS",
    "constraints", "default_lr", "finish_params", "learning_rates", "method_config_from_params",
    "optuna_trial", "outside_budget", "trial_params",
]  # fmt: skip
