"""Exact parameter accounting of every PEFT method, from the backbone's shape alone (no torch).

Two figures per configuration (:class:`ParamCount`):

* ``trainable_params``: what the optimiser updates (``requires_grad``), classification head included.
  This is the figure a budget constrains by default (the study plan's fairness rule).
* ``added_params``: everything added to the backbone as stored and served: head, method modules,
  frozen source adapters and fusion layers. For prefix tuning it is the flattened prefix, not the
  reparametrisation MLP that only exists during training.

Each figure equals, to the parameter, what ``trainables.methods.build_model`` builds (the tests
compare them on three shapes). The formulas follow adapters 1.3.0 and peft 0.21 module by module;
docs/METHODS.md lists the traps they encode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from search_spaces.errors import ConfigError
from search_spaces.method_config import AUTOPEFT_MODULES, METHODS, PLACEMENTS, MethodConfig
from search_spaces.shapes import BackboneShape

# Hidden width of the prefix reparametrisation MLP: adapters' PrefixTuningConfig default
# (``bottleneck_size``), the value of Li & Liang (2021).
PREFIX_MLP_HIDDEN = 512
# Bottleneck-adapter locations per layer: Houlsby after attention and FFN, Pfeiffer after FFN only.
BOTTLENECK_LOCATIONS = {"houlsby": 2, "pfeiffer": 1}
# adapters' LoRA can adapt these BERT linears only (no attention.output): placements it supports.
ADAPTERS_LORA_PLACEMENTS = ("attn_qv", "ffn")
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


def _full(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    if config.layers is None:
        return ParamCount(shape.backbone_params, 0)
    # the top-k (or any) layers fine-tuned; embeddings and the other layers frozen
    n = len(method_layers(config, shape.num_layers))
    return ParamCount(n * encoder_layer_params(shape), 0)


def _bitfit(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    return ParamCount(bitfit_params(shape), 0)


def _lora(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    ranks = config.lora_ranks(shape.num_layers)
    if not any(ranks):
        raise ConfigError(f"layer_ranks={config.layer_ranks!r} puts LoRA in no layer")
    total = sum(lora_params_per_layer(r, config.placement, shape) for r in ranks if r)
    return ParamCount(total, total)


def _adalora(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    if config.layer_ranks is not None:
        raise ConfigError(
            f"layer_ranks={config.layer_ranks!r} is not supported for method='adalora' "
            "(AdaLoRA allocates ranks itself); use layers"
        )
    per_layer = adalora_params_per_layer(config.init_rank, config.placement, shape)
    n = len(method_layers(config, shape.num_layers))
    final = n * adalora_params_per_layer(config.rank, config.placement, shape)[0]
    return ParamCount(n * per_layer[0], n * per_layer[1],
                      final if config.budget_rank == "final" else None)  # fmt: skip


def _bottleneck(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    n = len(method_layers(config, shape.num_layers))
    total = n * bottleneck_params_per_layer(config.method, config.bottleneck, shape)
    return ParamCount(total, total)


def _prefix(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    n = len(method_layers(config, shape.num_layers))
    trainable, stored = prefix_params(config.prefix_length, n, shape, reparam=config.prefix_reparam)
    return ParamCount(trainable, stored)


def _unipelt(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    if config.layer_ranks is not None:
        raise ConfigError(
            f"layer_ranks={config.layer_ranks!r} is not supported for method='unipelt' "
            "(its three modules share the layers); use layers"
        )
    rank, layers = adapters_lora(config, shape.num_layers)
    n, d = len(layers), shape.hidden
    prefix_train, prefix_stored = prefix_params(
        config.prefix_length, n, shape, reparam=config.prefix_reparam
    )
    gated = (
        lora_params_per_layer(rank, config.placement, shape, gated=True)
        + bottleneck_adapter_params(config.bottleneck, shape, gated=True)
        + (d + 1)  # the prefix gate of each layer, Linear(d, 1)
    )
    return ParamCount(n * gated + prefix_train, n * gated + prefix_stored)


def _fusion_parts(config: MethodConfig, shape: BackboneShape) -> tuple[int, int]:
    """``(trainable, frozen)`` of fusion layers, the target adapter and the frozen sources."""
    n = shape.num_layers
    fusion = len(config.fused_layers(n)) * fusion_params_per_layer(config.fusion, shape)
    target = 0
    if config.target_bottleneck:
        target = n * bottleneck_adapter_params(config.target_bottleneck, shape)
    sources = len(config.sources) * n * bottleneck_adapter_params(config.bottleneck, shape)
    return fusion + target, sources


def _fusion(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    trainable, frozen = _fusion_parts(config, shape)
    return ParamCount(trainable, trainable + frozen)


def _lora_fusion(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    rank, layers = adapters_lora(config, shape.num_layers)
    lora = len(layers) * lora_params_per_layer(rank, config.placement, shape)
    trainable, frozen = _fusion_parts(config, shape)
    return ParamCount(
        lora + trainable, lora + trainable + frozen + entropy_state_params(config, shape)
    )


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


def _lora_grow(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    if config.layer_ranks is not None:
        raise ConfigError(
            f"layer_ranks={config.layer_ranks!r} is not supported for method='lora_grow' "
            "(one rank grows everywhere); use layers"
        )
    n = len(method_layers(config, shape.num_layers))
    total = n * lora_params_per_layer(config.rank, config.placement, shape)  # at its largest rank
    return ParamCount(total, total + GROWTH_STATE_PARAMS)


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


def _autopeft(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    modules = autopeft_modules(config, shape.num_layers)
    per_layer = {
        "serial": bottleneck_adapter_params(config.bottleneck, shape),
        "parallel": bottleneck_adapter_params(config.parallel_bottleneck, shape),
        "lora": lora_params_per_layer(config.rank, config.placement, shape),
        "prefix": 0,
        "none": 0,
    }
    if set(per_layer) != set(AUTOPEFT_MODULES):
        raise ImportError("autopeft accounting misses a module type")
    total = sum(per_layer[m] for m in modules)
    n_prefix = modules.count("prefix")
    if not n_prefix:
        return ParamCount(total, total)
    trainable, stored = prefix_params(
        config.prefix_length, n_prefix, shape, reparam=config.prefix_reparam
    )
    return ParamCount(total + trainable, total + stored)


# method -> counter of the method's own parameters (head excluded)
_COUNTERS: dict[str, Callable[[MethodConfig, BackboneShape], ParamCount]] = {
    "full": _full,
    "bitfit": _bitfit,
    "lora": _lora,
    "adalora": _adalora,
    "houlsby": _bottleneck,
    "pfeiffer": _bottleneck,
    "prefix": _prefix,
    "unipelt": _unipelt,
    "fusion": _fusion,
    "lora_fusion": _lora_fusion,
    "lora_grow": _lora_grow,
    "autopeft": _autopeft,
}
if set(_COUNTERS) != set(METHODS):
    raise ImportError(f"accounting misses methods: {sorted(set(METHODS) - set(_COUNTERS))}")


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
    method = _COUNTERS[config.method](config, shape)
    head = head_params(config, shape)
    budget = None if method.budget_trainable is None else method.budget_trainable + head
    return ParamCount(method.trainable_params + head, method.added_params + head, budget)


__all__ = [
    "ParamCount", "count_params", "head_params", "lora_params_per_layer",
    "adalora_params_per_layer", "bottleneck_adapter_params", "bottleneck_params_per_layer",
    "fusion_params_per_layer", "prefix_params", "bitfit_params", "method_layers", "adapters_lora",
    "autopeft_modules", "encoder_layer_params", "entropy_state_params",
    "ADAPTERS_LORA_METHODS", "ADAPTERS_LORA_PLACEMENTS", "BOTTLENECK_LOCATIONS", "PREFIX_MLP_HIDDEN",
    "GROWTH_STATE_PARAMS", "LORA_SHARE_BINS", "lora_module_params", "lora_share", "share_bin",
]  # fmt: skip
