"""The AutoPEFT search space (Zhou et al., 2024, https://arxiv.org/abs/2301.12132), define-by-run.

A trial first picks an arm: ``autopeft`` or one of the fixed baselines (UniPELT, single methods at
their given sizes). An ``autopeft`` trial then picks one module per encoder layer among
:data:`AUTOPEFT_MODULES` (``layer{i}``), the size of each module type it used (only those: a
size that shapes nothing is never sampled) and the learning rate. Layer choices are generated from
the backbone's depth, never written out per layer. A trial whose layers all chose ``none`` gets
LoRA on its top layer (the smallest module): every sample builds.

Sizes come from :data:`DEFAULT_SIZES` unless given. Counts are exact (``count_params``); with a
``budget`` the trial carries its deviation and the constraint ``|deviation| - tolerance``, so a
constrained sampler can keep to it, but nothing is matched: the study is a Pareto front of score
against trainable parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from search_spaces.accounting import count_params
from search_spaces.errors import ConfigError, one_of
from search_spaces.matching import ALPHA_PER_RANK, Budget
from search_spaces.method_config import AUTOPEFT_MODULES, MethodConfig
from search_spaces.params import LR_RANGES, finish_params, optuna_trial, trial_params
from search_spaces.shapes import BackboneShape
from search_spaces.spaces import MethodSpace

# module type -> the MethodConfig field that sizes it
SIZE_KNOBS = {
    "serial": "bottleneck",
    "parallel": "parallel_bottleneck",
    "prefix": "prefix_length",
    "lora": "rank",
}
# AutoPEFT's grid of sizes, scaled to BERT-size encoders (the paper searched 1..hidden/… widths)
DEFAULT_SIZES: dict[str, tuple[int, ...]] = {
    "bottleneck": (4, 16, 64),
    "parallel_bottleneck": (4, 16, 64),
    "prefix_length": (4, 16),
    "rank": (2, 8),
}
AUTOPEFT_ARM = "autopeft"
REPAIR_MODULE = "lora"  # put on the top layer of an all-"none" sample


@dataclass(frozen=True)
class AutoPeftSpace:
    """``autopeft`` (per-layer modules, sizes, lr) or a baseline arm (its lr only)."""

    shape: BackboneShape
    template: MethodConfig  # num_labels, head and the fixed knobs (placement, prefix_reparam...)
    sizes: dict[str, tuple[int, ...]]
    baselines: dict[str, MethodSpace] = field(default_factory=dict)  # label -> its space
    budget: Budget | None = None

    def __call__(self, trial: Any) -> dict[str, Any]:
        ot_trial = optuna_trial(trial)
        arms = (AUTOPEFT_ARM, *self.baselines)
        arm = arms[0] if len(arms) == 1 else ot_trial.suggest_categorical("arm", arms)
        if arm != AUTOPEFT_ARM:
            return self.baselines[arm](trial)
        modules = [
            ot_trial.suggest_categorical(f"layer{i}", AUTOPEFT_MODULES)
            for i in range(self.shape.num_layers)
        ]
        if all(m == "none" for m in modules):
            modules[-1] = REPAIR_MODULE
        knobs = {
            SIZE_KNOBS[kind]: ot_trial.suggest_categorical(
                SIZE_KNOBS[kind], self.sizes[SIZE_KNOBS[kind]]
            )
            for kind in SIZE_KNOBS
            if kind in modules
        }
        if "rank" in knobs:  # LoRA's scale alpha / r as for matched LoRA elsewhere
            knobs["alpha"] = ALPHA_PER_RANK * knobs["rank"]
        config = self.template.replace(layer_modules=tuple(modules), **knobs)
        params = trial_params(config, count_params(config, self.shape), self.budget)
        for kind, knob in SIZE_KNOBS.items():  # a size no layer uses shapes nothing: not a param
            if kind not in modules:
                params[knob] = None
        if "lora" not in modules:
            params.update(alpha=None, placement=None)
        if "prefix" not in modules:
            params["prefix_reparam"] = None
        return finish_params(ot_trial, params, LR_RANGES[AUTOPEFT_ARM], f"lr[{AUTOPEFT_ARM}]")

    def describe(self) -> str:
        sizes = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in self.sizes.items())
        arms = ", ".join((AUTOPEFT_ARM, *self.baselines))
        return (
            f"arms: {arms}; per layer ({self.shape.num_layers}): {' | '.join(AUTOPEFT_MODULES)}; "
            f"sizes: {sizes}"
        )


def autopeft_space(
    *,
    shape: BackboneShape,
    baselines: Mapping[str, MethodSpace] | None = None,
    sizes: Mapping[str, tuple[int, ...]] | None = None,
    budget: Budget | None = None,
    num_labels: int = 2,
    head: str = "mean",
    **fixed: Any,
) -> AutoPeftSpace:
    """The AutoPEFT space on ``shape``; ``fixed`` are MethodConfig knobs every autopeft trial
    keeps (e.g. ``prefix_reparam=False``, ``placement="ffn"``). Raises ``ConfigError`` for an
    unknown size knob or an empty size list."""
    chosen = {**DEFAULT_SIZES, **dict(sizes or {})}
    for knob, values in chosen.items():
        if knob not in DEFAULT_SIZES:
            raise one_of("autopeft size knob", knob, DEFAULT_SIZES)
        if not values or any(not isinstance(v, int) or v <= 0 for v in values):
            raise ConfigError(f"sizes[{knob!r}]={values!r} must be positive integers")
    template = MethodConfig(method=AUTOPEFT_ARM, num_labels=num_labels, head=head, **fixed)
    for kind in SIZE_KNOBS:  # every size must build with the fixed knobs (placement, layers)
        probe = template.replace(
            layer_modules=(kind,) * shape.num_layers,
            **{SIZE_KNOBS[kind]: chosen[SIZE_KNOBS[kind]][0]},
        )
        count_params(probe, shape)
    sizes_ = {k: tuple(v) for k, v in chosen.items()}
    return AutoPeftSpace(shape, template, sizes_, dict(baselines or {}), budget)


__all__ = ["DEFAULT_SIZES", "SIZE_KNOBS", "AutoPeftSpace", "autopeft_space"]
