"""``--set key=value`` routed to the part of the study it configures, or refused with the choices."""

from __future__ import annotations

import dataclasses
from typing import Any

from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig, coerce
from trainables.recipe import parse_fault
from trainables.train_config import TrainConfig
from tuner.cli import parse_sets  # noqa: F401  (re-exported: --set parsing and routing)
from tuner.experiment import Experiment, Search

EXPERIMENT_KEYS = ("task", "backbone", "head", "num_samples", "train_samples", "grace_period",
                   "reduction_factor", "fault")  # fmt: skip
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
            fixed[key] = coerce(key, raw, method_fields[key].type)
        else:
            raise ConfigError(
                f"--set key {key!r} is unknown; known keys: {', '.join(allowed_keys())}"
            )
    TrainConfig.from_dict(train)  # type-check the merged training knobs now, not in a trial
    parse_fault(changes.get("fault"))
    search_obj = dataclasses.replace(exp.search, **search, fixed=fixed)
    return dataclasses.replace(exp, **changes, search=search_obj, train=train)
