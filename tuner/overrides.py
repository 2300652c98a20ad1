"""``--set key=value`` routed to the part of the study it configures, or refused with the choices."""

from __future__ import annotations

import dataclasses
from typing import Any

from search_spaces.errors import ConfigError, did_you_mean, one_of
from search_spaces.method_config import METHODS, MethodConfig, coerce
from trainables.backbone_registry import backbone_source
from trainables.faults import parse_fault
from trainables.train_config import TrainConfig
from tuner.cli import parse_sets  # noqa: F401  (re-exported: --set parsing and routing)
from tuner.experiment import Experiment, Search

EXPERIMENT_KEYS = ("task", "backbone", "head", "num_samples", "train_samples", "grace_period",
                   "reduction_factor", "scheduler", "fault")  # fmt: skip
SEARCH_KEYS = ("budget_params", "tolerance", "accounting", "sources")


def allowed_keys() -> list[str]:
    method = [f.name for f in dataclasses.fields(MethodConfig) if f.name != "num_labels"]
    train = [f.name for f in dataclasses.fields(TrainConfig)]
    return sorted({*EXPERIMENT_KEYS, *SEARCH_KEYS, *method, *train})


def apply_sets(exp: Experiment, sets: dict[str, str]) -> Experiment:
    """The experiment with ``--set`` overrides applied; every value is type-checked now."""
    method_fields = {f.name: f for f in dataclasses.fields(MethodConfig)}
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    exp_fields = {f.name: f for f in dataclasses.fields(Experiment)}
    search_fields = {f.name: f for f in dataclasses.fields(Search)}
    changes: dict[str, Any] = {}
    search: dict[str, Any] = {}
    train = dict(exp.train)
    fixed = dict(exp.search.fixed)
    for key, raw in sets.items():
        if key in EXPERIMENT_KEYS:
            changes[key] = coerce(key, raw, exp_fields[key].type)
        elif key in SEARCH_KEYS:
            search[key] = coerce(key, raw, search_fields[key].type)
        elif key in train_fields:
            train[key] = coerce(key, raw, train_fields[key].type)
        elif key in method_fields and key != "num_labels":
            fixed[key] = check_knob(key, coerce(key, raw, method_fields[key].type))
        else:
            known = allowed_keys()
            raise ConfigError(
                f"--set key {key!r} is unknown; known keys: {', '.join(known)}"
                f"{did_you_mean(key, known)}"
            )
    TrainConfig.from_dict(train)  # type-check the merged training knobs now, not in a trial
    parse_fault(changes.get("fault"))
    search_obj = dataclasses.replace(exp.search, **search, fixed=fixed)
    if "method" in sets:
        search_obj = select_method(search_obj, fixed["method"])
    return check_study(dataclasses.replace(exp, **changes, search=search_obj, train=train))


def check_knob(key: str, value: Any) -> Any:
    """A method knob checked alone, by MethodConfig's own rules: a name must be a method, a
    size must fit every method (``rank=0``, ``bottleneck=-1`` fit none)."""
    if key == "method" and value not in METHODS:
        raise one_of("method", value, METHODS)
    if isinstance(value, int | float) and not isinstance(value, bool):
        MethodConfig(method="lora", **{key: value})
    return value


def select_method(search: Search, method: str) -> Search:
    """``--set method=M``: the search tries M alone (a budget_split search pins its method lump
    in ``tuner.space``); M must be among the methods the search has."""
    if search.kind == "budget_split":
        return search
    fixed = {k: v for k, v in search.fixed.items() if k != "method"}
    if search.kind == "methods":
        if method not in search.methods:
            raise one_of("method", method, search.methods)
        return dataclasses.replace(search, methods=(method,), fixed=fixed)
    arms = tuple(arm for arm in search.configs if arm["method"] == method)
    if not arms:
        raise one_of("method", method, sorted({arm["method"] for arm in search.configs}))
    return dataclasses.replace(search, configs=arms, fixed=fixed)


def check_study(exp: Experiment) -> Experiment:
    """Study knobs that would otherwise fail only once Ray runs (ASHA, the trials), and a
    backbone that cannot be loaded (refused before torch is imported)."""
    backbone_source(exp.backbone)
    if exp.reduction_factor < 2:
        raise ConfigError(f"reduction_factor={exp.reduction_factor} must be an integer >= 2")
    if exp.train_samples is not None and exp.train_samples < 1:
        raise ConfigError(f"train_samples={exp.train_samples} must be an integer >= 1")
    return exp
