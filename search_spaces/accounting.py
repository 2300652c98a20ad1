"""Exact parameter accounting of every PEFT method, from the backbone's shape alone (no torch).

Two figures per configuration (:class:`ParamCount`):

* ``trainable_params``: what the optimiser updates (``requires_grad``), classification head included.
  This is the figure a budget constrains by default (the study plan's fairness rule).
* ``added_params``: everything added to the backbone as stored and served: head, method modules,
  frozen source adapters and fusion layers. For prefix tuning it is the flattened prefix, not the
  reparametrisation MLP that only exists during training.

Each figure equals, to the parameter, what ``trainables.methods.build_model`` builds (the tests
compare them on three shapes). The formulas follow adapters 1.3.0 and peft 0.21 module by module
(:mod:`search_spaces.formulas`), each method's counter is one of its facts
(:mod:`search_spaces.catalog`); docs/METHODS.md lists the traps they encode.
"""

from __future__ import annotations

from search_spaces import catalog  # noqa: F401  (registers every method's facts)
from search_spaces.formulas import (
    ADAPTERS_LORA_METHODS,
    ADAPTERS_LORA_PLACEMENTS,
    BOTTLENECK_LOCATIONS,
    GROWTH_STATE_PARAMS,
    PREFIX_MLP_HIDDEN,
    ParamCount,
    adalora_params_per_layer,
    adapters_lora,
    autopeft_modules,
    bitfit_params,
    bottleneck_adapter_params,
    bottleneck_params_per_layer,
    encoder_layer_params,
    entropy_state_params,
    fusion_params_per_layer,
    head_params,
    linear_shape,
    lora_params_per_layer,
    method_layers,
    prefix_params,
)
from search_spaces.method_config import MethodConfig
from search_spaces.method_facts import METHOD_FACTS
from search_spaces.shapes import BackboneShape


def lora_module_params(config: MethodConfig, shape: BackboneShape) -> int | None:
    """Parameters in the LoRA modules of a budget split: all of them for ``lora``, its LoRA part
    for ``lora_fusion``, 0 for ``fusion`` alone; None for methods outside the split (E4's axis)."""
    if config.method == "fusion":
        return 0
    if config.method == "lora_fusion":
        rank, layers = adapters_lora(config, shape.num_layers)
        return len(layers) * lora_params_per_layer(rank, config.placement, shape)
    if config.method != "lora":
        return None
    ranks = config.lora_ranks(shape.num_layers)
    return sum(lora_params_per_layer(r, config.placement, shape) for r in ranks if r)


# The LoRA share of a split (lora_share, in [0, 1]) in E4's bins: upper edges and labels.
LORA_SHARE_BINS = ((0.0, "0%"), (0.25, "1-25%"), (0.5, "26-50%"), (0.75, "51-75%"),
                   (1.0, "76-100%"))  # fmt: skip


def share_bin(share: float) -> str:
    """The label of ``share``'s bin (0 alone is ``0%``)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"a LoRA share is in [0, 1], but got {share=}")
    return next(label for edge, label in LORA_SHARE_BINS if share <= edge)


def lora_share(config: MethodConfig, shape: BackboneShape, counted_params: int) -> float | None:
    """The LoRA share of a budget split: ``lora_module_params`` over ``counted_params``, the
    parameters the trial's budget counts (``Budget.params`` of its count: trainable, head
    included, or added). In [0, 1] by construction: a trial may exceed the budget by the
    tolerance, a LoRA-only split still holds 100 % (less its head), never 105 %. None for
    methods outside the split. The sampler's strata and the E4 report both use it."""
    lora = lora_module_params(config, shape)
    if lora is None:
        return None
    if counted_params <= 0:
        raise ValueError(f"counted_params must be > 0, but got {counted_params=}")
    return lora / counted_params


def count_params(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    """Trainable and added parameters of ``config`` on a backbone of ``shape``; pure arithmetic.

    Raises ``ConfigError`` for a configuration the method cannot build on this backbone (a layer
    out of range, a placement the library cannot adapt, LoRA in no layer).
    """
    config.fused_layers(shape.num_layers)  # validates fusion_layers against the depth
    method = METHOD_FACTS.get(config.method).count(config, shape)
    head = head_params(config, shape)
    budget = None if method.budget_trainable is None else method.budget_trainable + head
    return ParamCount(method.trainable_params + head, method.added_params + head, budget)


__all__ = [
    "ParamCount", "count_params", "head_params", "lora_params_per_layer",
    "adalora_params_per_layer", "bottleneck_adapter_params", "bottleneck_params_per_layer",
    "fusion_params_per_layer", "prefix_params", "bitfit_params", "method_layers", "adapters_lora",
    "autopeft_modules", "encoder_layer_params", "entropy_state_params", "linear_shape",
    "ADAPTERS_LORA_METHODS", "ADAPTERS_LORA_PLACEMENTS", "BOTTLENECK_LOCATIONS", "PREFIX_MLP_HIDDEN",
    "GROWTH_STATE_PARAMS", "LORA_SHARE_BINS", "lora_module_params", "lora_share", "share_bin",
]  # fmt: skip
