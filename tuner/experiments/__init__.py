"""The registered experiments: importing this package registers each one (one file each)."""

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
)
