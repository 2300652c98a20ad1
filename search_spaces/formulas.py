"""The formulas of parameter accounting: module sizes from the backbone's shape (no torch).

Each function counts one kind of module (a LoRA pair, a bottleneck adapter, a fusion layer, a
prefix, the head) as adapters 1.3.0 and peft 0.21 build it; :mod:`search_spaces.catalog` sums
them into each method's count, and :mod:`search_spaces.accounting` is the public entry point.
"""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces.errors import ConfigError
from search_spaces.method_config import PLACEMENTS, MethodConfig
from search_spaces.shapes import BackboneShape

# Hidden width of the prefix reparametrisation MLP: adapters' PrefixTuningConfig default
# (``bottleneck_size``), the value of Li & Liang (2021).
PREFIX_MLP_HIDDEN = 512
# Bottleneck-adapter locations per layer: Houlsby after attention and FFN, Pfeiffer after FFN only.
BOTTLENECK_LOCATIONS = {"houlsby": 2, "pfeiffer": 1}
# adapters' LoRA can adapt these BERT linears only (no attention.output): placements it supports.
ADAPTERS_LORA_PLACEMENTS = ("attn_qv", "ffn", "attn_qv_ffn")
ADAPTERS_LORA_METHODS = ("unipelt", "lora_fusion")
# lora_grow stores its growth state (active rank, best dev loss, evaluations without improvement)
# as one frozen 3-vector: served with the model, so a checkpoint resumes at the grown rank.
GROWTH_STATE_PARAMS = 3


@dataclass(frozen=True)
class ParamCount:
    """The two parameter figures of one method configuration on one backbone."""

    trainable_params: (
        int  # what the optimiser updates (requires_grad), classification head included
    )
    added_params: int  # head + method modules incl. frozen source adapters and fusion, as stored
    # what a trainable budget counts where a method's convention differs from trainable_params:
    # AdaLoRA's parameters at its final rank (the paper's budget); None = trainable_params
    budget_trainable: int | None = None


def linear_shape(module: str, shape: BackboneShape) -> tuple[int, int]:
    """``(in_features, out_features)`` of one BERT linear named as in ``PLACEMENTS``."""
    d, i = shape.hidden, shape.intermediate
    if module == "intermediate":
        return d, i
    if module == "output":
        return i, d
    return d, d  # query, key, value, attention.output


def lora_params_per_layer(
    rank: int, placement: str, shape: BackboneShape, *, gated: bool = False
) -> int:
    """LoRA A (r x in) and B (out x r) of every linear of ``placement`` in one layer.

    ``gated`` adds UniPELT's gate, a ``Linear(in, 1)`` per adapted linear.
    """
    total = 0
    for module in PLACEMENTS[placement]:
        fan_in, fan_out = linear_shape(module, shape)
        total += rank * (fan_in + fan_out) + (fan_in + 1 if gated else 0)
    return total


def adalora_params_per_layer(
    init_rank: int, placement: str, shape: BackboneShape
) -> tuple[int, int]:
    """``(trainable, added)`` of AdaLoRA's SVD triplets in one layer.

    Each adapted linear holds A (r x in), B (out x r), E (r x 1) at ``init_rank``: pruning masks E,
    it never shrinks the tensors. ``added`` also counts peft's frozen ``ranknum`` scalar.
    """
    trainable = 0
    for module in PLACEMENTS[placement]:
        fan_in, fan_out = linear_shape(module, shape)
        trainable += init_rank * (fan_in + fan_out + 1)
    return trainable, trainable + len(PLACEMENTS[placement])


def bottleneck_adapter_params(bottleneck: int, shape: BackboneShape, *, gated: bool = False) -> int:
    """One bottleneck adapter: down ``Linear(d, b)``, up ``Linear(b, d)``, optional gate ``Linear(d, 1)``."""
    d = shape.hidden
    return 2 * d * bottleneck + bottleneck + d + (d + 1 if gated else 0)


def bottleneck_params_per_layer(method: str, bottleneck: int, shape: BackboneShape) -> int:
    """Bottleneck adapters of one layer: two for ``houlsby``, one for ``pfeiffer``."""
    if method not in BOTTLENECK_LOCATIONS:
        raise ConfigError(f"method={method!r} is not one of: {', '.join(BOTTLENECK_LOCATIONS)}")
    return BOTTLENECK_LOCATIONS[method] * bottleneck_adapter_params(bottleneck, shape)


def fusion_params_per_layer(fusion: str, shape: BackboneShape) -> int:
    """One AdapterFusion layer, whatever the number of fused adapters.

    Query and key are ``Linear(d, d)``; dynamic fusion adds a bias-free value ``Linear(d, d)``.
    """
    d = shape.hidden
    static = 2 * (d * d + d)
    if fusion == "static":
        return static
    if fusion == "dynamic":
        return static + d * d
    raise ConfigError(f"fusion={fusion!r} is not one of: static, dynamic")


def prefix_params(
    prefix_length: int, num_layers: int, shape: BackboneShape, *, reparam: bool
) -> tuple[int, int]:
    """``(trainable, stored)`` of one prefix over ``num_layers`` layers.

    Stored is the flat prefix (a key and a value vector per layer and position). With ``reparam``
    training updates an embedding (L x d) and the MLP ``d -> 512 -> num_layers * 2 * d`` instead.
    """
    d, h = shape.hidden, PREFIX_MLP_HIDDEN
    stored = prefix_length * num_layers * 2 * d
    if not reparam:
        return stored, stored
    mlp = prefix_length * d + (d * h + h) + (h * num_layers * 2 * d + num_layers * 2 * d)
    return mlp, stored


def head_params(config: MethodConfig, shape: BackboneShape) -> int:
    """The classification head: ``Linear(d, num_labels)``, after the pooler for ``head="cls"``."""
    d = shape.hidden
    pooler = shape.pooler_params if config.head == "cls" else 0
    return pooler + d * config.num_labels + config.num_labels


def bitfit_params(shape: BackboneShape) -> int:
    """Every bias of the backbone (LayerNorm biases included): the embedding LayerNorm, then per
    layer q, k, v, attention output, intermediate, output and two LayerNorms."""
    d, i = shape.hidden, shape.intermediate
    return d + shape.num_layers * (7 * d + i)


def method_layers(config: MethodConfig, num_layers: int) -> tuple[int, ...]:
    """The layers that carry the method's modules (``layers``; every layer when unset)."""
    return tuple(
        i for i, r in enumerate(config.replace(layer_ranks=None).lora_ranks(num_layers)) if r
    )


def adapters_lora(config: MethodConfig, num_layers: int) -> tuple[int, tuple[int, ...]]:
    """``(rank, layers)`` of the LoRA that adapters builds for unipelt and lora_fusion.

    adapters' LoRA has one rank per module and no ``attention.output``: other choices are refused.
    """
    if config.placement not in ADAPTERS_LORA_PLACEMENTS:
        raise ConfigError(
            f"placement={config.placement!r} is not available for method={config.method!r} "
            f"(adapters' LoRA cannot adapt attention.output); use one of: "
            f"{', '.join(ADAPTERS_LORA_PLACEMENTS)}"
        )
    ranks = config.lora_ranks(num_layers)
    used = sorted({r for r in ranks if r})
    if len(used) > 1:
        raise ConfigError(
            f"layer_ranks={config.layer_ranks!r} mixes ranks {used}: method={config.method!r} "
            "supports one rank (zeros allowed to skip layers)"
        )
    if not used:
        raise ConfigError(f"layer_ranks={config.layer_ranks!r} puts LoRA in no layer")
    return used[0], tuple(i for i, r in enumerate(ranks) if r)


def encoder_layer_params(shape: BackboneShape) -> int:
    """One BERT encoder layer: attention (q, k, v, output + LayerNorm) and FFN (+ LayerNorm)."""
    d, i = shape.hidden, shape.intermediate
    return 4 * (d * d + d) + 2 * d + d * i + i + i * d + d + 2 * d


def entropy_state_params(config: MethodConfig, shape: BackboneShape) -> int:
    """Frozen record of ``lora_placement_rule="fusion_entropy"``: the entropy measured in each
    fused layer and the layer each of the k LoRA slots went to (0 for the fixed rule)."""
    if config.lora_placement_rule != "fusion_entropy":
        return 0
    fused = config.fused_layers(shape.num_layers)
    k = len(method_layers(config, shape.num_layers))
    if k > len(fused):
        raise ConfigError(
            f"lora_placement_rule='fusion_entropy' picks {k} LoRA layers among the {len(fused)} "
            f"fused layers: lower len(layers) or widen fusion_layers"
        )
    return len(fused) + k


def autopeft_modules(config: MethodConfig, num_layers: int) -> tuple[str, ...]:
    """The module of each encoder layer (``layer_modules``; a serial adapter everywhere if unset)."""
    modules = config.layer_modules or ("serial",) * num_layers
    if len(modules) != num_layers:
        raise ConfigError(
            f"layer_modules has {len(modules)} entries, the backbone {num_layers} layers"
        )
    if all(m == "none" for m in modules):
        raise ConfigError(f"layer_modules={','.join(modules)!r} puts no module in any layer")
    if "lora" in modules and config.placement not in ADAPTERS_LORA_PLACEMENTS:
        raise ConfigError(
            f"placement={config.placement!r} is not available for method='autopeft' (adapters' "
            f"LoRA cannot adapt attention.output); use one of: {', '.join(ADAPTERS_LORA_PLACEMENTS)}"
        )
    return tuple(modules)


__all__ = [
    "ParamCount", "head_params", "lora_params_per_layer", "adalora_params_per_layer",
    "bottleneck_adapter_params", "bottleneck_params_per_layer", "fusion_params_per_layer",
    "prefix_params", "bitfit_params", "method_layers", "adapters_lora", "autopeft_modules",
    "encoder_layer_params", "entropy_state_params", "linear_shape", "ADAPTERS_LORA_METHODS",
    "ADAPTERS_LORA_PLACEMENTS", "BOTTLENECK_LOCATIONS", "GROWTH_STATE_PARAMS", "PREFIX_MLP_HIDDEN",
]  # fmt: skip
