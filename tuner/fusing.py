"""``python -m tuner.run NAME --fuse K``: a study's LoRA trials trained as the rows of one fused
pool that holds one GPU (:mod:`trainables.fused_pool`), K at a time.

Each configuration stays its own Tune trial (its searcher suggestion, scheduler decision, MLflow
run, checkpoint); its process only relays the pool's reports, so it holds a quarter of a CPU and
no GPU. Checked before anything starts: every configuration the search would try first is LoRA
with the mean head. The rows' rank is the largest rank those configurations have; a study whose
configurations put LoRA on different linears gets rows over every linear (``placement="all"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search_spaces.errors import ConfigError
from trainables.recipe import split_config
from tuner.experiment import Experiment

SAMPLED = 200  # configurations read up front (a grid's arms are all of them)
CLIENT_CPUS = 0.25  # a pooled trial's process: it relays reports and writes one checkpoint


@dataclass(frozen=True)
class FusePlan:
    slots: int  # trials trained at once, as rows of the one fused model
    rank: int  # the rows' LoRA rank: no trial may have a larger one
    placement: str | None  # the rows' linears: None for the first trial's, "all" for every one


def fuse_plan(exp: Experiment, space: Any, slots: int, *, num_labels: int) -> FusePlan:
    """The pool ``--fuse slots`` needs for ``exp``, or a one-line refusal naming why not."""
    from tuner.space import first_configs

    if slots < 1:
        raise ConfigError(f"--fuse={slots} must be >= 1 (trials trained at once on the GPU)")
    configs = first_configs(exp, space, n=min(exp.num_samples, SAMPLED))
    methods = [split_config(c, num_labels=num_labels)[0] for c in configs]
    for m in methods:
        if m.method != "lora" or m.head != "mean":
            raise ConfigError(
                f"--fuse trains LoRA trials with the mean head; {exp.name} tries "
                f"method={m.method!r} head={m.head!r}: run it without --fuse"
            )
    rank = max(max((m.rank, *(m.layer_ranks or ()))) for m in methods)
    spots = {(m.placement, m.layers) for m in methods}
    return FusePlan(slots, rank, None if len(spots) == 1 else "all")


def start(plan: FusePlan, data: Any, *, cluster_gpus: float) -> Any:
    """The pool's Ray actor, on one GPU where the cluster has one (else on a CPU)."""
    from trainables.fused_pool import start_pool

    return start_pool(data, slots=plan.slots, rank=plan.rank, placement=plan.placement,
                      gpus=1 if cluster_gpus >= 1 else 0)  # fmt: skip
