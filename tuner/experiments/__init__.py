"""The registered experiments: importing this package registers each one (one file each), so the
lookups that need the whole registry live here.
"""

from tuner.experiment import EXPERIMENTS, Experiment
from tuner.experiments import (  # noqa: F401
    adalora,
    autopeft,
    e1_single_task,
    e2_few_shot,
    e3_transfer,
    e4_budget,
    e5_efficiency,
    glue_methods,
    novelty,
    placement,
    qlora,
)
from tuner.experiments.families import FAMILIES


def get_experiment(name: str) -> Experiment:
    """The registered experiment ``name`` (an unknown name: ConfigError naming the closest)."""
    return EXPERIMENTS.get(name)


def all_experiments() -> list[Experiment]:
    """Every registered experiment, in registration order."""
    return [EXPERIMENTS.get(n) for n in EXPERIMENTS.names()]


def get_family(name: str) -> tuple[str, ...]:
    """The experiment names of the family ``name`` (``tuner/experiments/families.py``)."""
    return FAMILIES.get(name)


__all__ = ["all_experiments", "get_experiment", "get_family"]
