"""Every method's facts (:class:`~search_spaces.method_facts.MethodFacts`), one
``register_facts`` call each, beside the counter of the method's own parameters.

A new method is one entry here (its accounting, learning-rate range, knobs, size knob,
fusability), one ``register_method`` in ``trainables/methods/`` (builder, paper, library) and
one row in docs/METHODS.md; ``tests/test_method_facts.py`` fails on a method that lacks one.
Counters exclude the head (``accounting.count_params`` adds it) and equal, to the parameter,
what ``trainables.methods.build_model`` builds.

WIDENED: a range whose top the fair-arms studies kept choosing (dev, 3-epoch runs on MiniLM-L6,
H200, 2026-12-03/04; docs/STUDIES.md) was widened upward (2026-12-04): full 1e-4 -> 3e-4 (9.0e-5,
9.6e-5 chosen on CoLA, MRPC), LoRA and rank growth 3e-3 -> 1e-2 (1.7e-3 and 2.4e-3 on CoLA),
AdaLoRA 3e-3 -> 1e-2 (2.0e-3 in every CoLA arm), BitFit 3e-3 -> 1e-2 (2.6e-3 in E1), prefix
1e-2 -> 3e-2 (6.8e-3 in E1), fusion 1e-3 -> 3e-3 and LoRA+fusion 2e-3 -> 6e-3 (their tops in E1,
E2, E3). The papers' rates (cited per method) are for longer runs on larger encoders; the lower
ends stay theirs.
"""

from __future__ import annotations

from search_spaces.errors import ConfigError
from search_spaces.formulas import (
    GROWTH_STATE_PARAMS,
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
    lora_params_per_layer,
    method_layers,
    prefix_params,
)
from search_spaces.method_config import AUTOPEFT_MODULES, METHODS, MethodConfig
from search_spaces.method_facts import METHOD_FACTS, MethodFacts, register_facts
from search_spaces.shapes import BackboneShape

_LORA = ("rank", "alpha", "placement", "layers", "layer_ranks")
_FUSION = ("fusion", "sources", "fusion_layers", "bottleneck", "target_bottleneck")
_AUTOPEFT_SIZES = ("bottleneck", "parallel_bottleneck", "prefix_length", "prefix_reparam")


def _full(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    if config.layers is None:
        return ParamCount(shape.backbone_params, 0)
    # the top-k (or any) layers fine-tuned; embeddings and the other layers frozen
    n = len(method_layers(config, shape.num_layers))
    return ParamCount(n * encoder_layer_params(shape), 0)


register_facts(
    MethodFacts(
        name="full",
        count=_full,
        lr_range=(1e-5, 3e-4),  # BERT fine-tuning: 2e-5 .. 5e-5 (Devlin et al., 2019); see WIDENED
        knobs=("layers",),  # the top-k layers fine-tuned; None = every weight
        size_knob=None,
        fused_padding=None,
        per_layer_ranks=False,
    )
)


def _bitfit(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    return ParamCount(bitfit_params(shape), 0)


register_facts(
    MethodFacts(
        name="bitfit",
        count=_bitfit,
        lr_range=(1e-4, 1e-2),  # BitFit searched 1e-4 .. 1e-3 (Ben Zaken et al., 2022); WIDENED
        knobs=(),
        size_knob=None,
        fused_padding=(),  # rows of FusedRows (trainables/fused/rows.py)
        per_layer_ranks=False,
    )
)


def _lora(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    ranks = config.lora_ranks(shape.num_layers)
    if not any(ranks):
        raise ConfigError(f"layer_ranks={config.layer_ranks!r} puts LoRA in no layer")
    total = sum(lora_params_per_layer(r, config.placement, shape) for r in ranks if r)
    return ParamCount(total, total)


register_facts(
    MethodFacts(
        name="lora",
        count=_lora,
        lr_range=(1e-4, 1e-2),  # LoRA on RoBERTa-base: 4e-4 .. 5e-4 (Hu et al., 2022); WIDENED
        knobs=(*_LORA, "quantize"),  # quantize: QUANTIZABLE_METHODS (method_config.py)
        size_knob="rank",
        # rows of FusedLoRA (trainables/fused/model.py)
        fused_padding=("rank", "alpha", "layer_ranks", "layers", "placement"),
        per_layer_ranks=True,  # peft's rank_pattern
        # graphed rows: 16 Tune trials pooled 9.8-10.4x one trial (H100, H200; BENCHMARKS.md);
        # the other fusable methods' graphed rows 3.9-5.7x at 8 in one process (H200 2026-12-05),
        # but e4_budget pooled (fusion, LoRA+fusion, LoRA) completed 1,003 trials per GPU-hour
        # against 2,498 as processes under MPS (H100 2026-12-06): not by default
        pools_by_default=True,
    )
)


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


register_facts(
    MethodFacts(
        name="adalora",
        count=_adalora,
        lr_range=(3e-4, 1e-2),  # authors' scripts: 5e-4 .. 2.2e-3 (Zhang et al. 2023); WIDENED
        knobs=(
            "rank",
            "adalora_scale",
            "placement",
            "layers",
            "init_rank",
            "budget_rank",
            "quantize",
        ),
        size_knob="rank",
        fused_padding=None,
        per_layer_ranks=False,
    )
)


def _bottleneck(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    n = len(method_layers(config, shape.num_layers))
    total = n * bottleneck_params_per_layer(config.method, config.bottleneck, shape)
    return ParamCount(total, total)


register_facts(
    MethodFacts(
        name="houlsby",
        count=_bottleneck,
        lr_range=(3e-5, 3e-3),  # Houlsby et al. (2019) searched 3e-5, 3e-4, 3e-3
        knobs=("bottleneck", "layers"),
        size_knob="bottleneck",
        fused_padding=("bottleneck",),  # rows of FusedRows (trainables/fused/rows.py)
        per_layer_ranks=False,
    )
)


register_facts(
    MethodFacts(
        name="pfeiffer",
        count=_bottleneck,
        lr_range=(3e-5, 3e-3),  # as Houlsby
        knobs=("bottleneck", "layers"),
        size_knob="bottleneck",
        fused_padding=("bottleneck",),  # rows of FusedRows (trainables/fused/rows.py)
        per_layer_ranks=False,
    )
)


def _prefix(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    n = len(method_layers(config, shape.num_layers))
    trainable, stored = prefix_params(config.prefix_length, n, shape, reparam=config.prefix_reparam)
    return ParamCount(trainable, stored)


register_facts(
    MethodFacts(
        name="prefix",
        count=_prefix,
        lr_range=(1e-4, 3e-2),  # prefixes want large rates (P-tuning v2: up to 1e-2); WIDENED
        knobs=("prefix_length", "prefix_reparam", "layers"),
        size_knob="prefix_length",
        # rows of FusedRows; nothing pads: a zero prefix key still takes softmax mass
        fused_padding=(),
        per_layer_ranks=False,
    )
)


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


register_facts(
    MethodFacts(
        name="unipelt",
        count=_unipelt,
        lr_range=(1e-4, 3e-3),  # its LoRA and adapter parts
        knobs=(*_LORA, "bottleneck", "prefix_length", "prefix_reparam"),
        size_knob="sizes",
        fused_padding=None,
        per_layer_ranks=False,
    )
)


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


register_facts(
    MethodFacts(
        name="fusion",
        count=_fusion,
        lr_range=(2e-5, 3e-3),  # AdapterFusion: 5e-5 (Pfeiffer et al. 2021); WIDENED
        knobs=(*_FUSION, "fusion_init", "source_similarity"),
        size_knob="fusion_layers",
        # rows of FusedRows (trainables/fused/rows.py)
        fused_padding=("target_bottleneck", "sources", "fusion_layers", "fusion"),
        per_layer_ranks=False,
    )
)


def _lora_fusion(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    rank, layers = adapters_lora(config, shape.num_layers)
    lora = len(layers) * lora_params_per_layer(rank, config.placement, shape)
    trainable, frozen = _fusion_parts(config, shape)
    return ParamCount(
        lora + trainable, lora + trainable + frozen + entropy_state_params(config, shape)
    )


register_facts(
    MethodFacts(
        name="lora_fusion",
        count=_lora_fusion,
        lr_range=(5e-5, 6e-3),  # between fusion's and LoRA's; WIDENED
        knobs=(*_LORA, *_FUSION, "fusion_init", "source_similarity", "lora_placement_rule"),
        size_knob="rank",
        fused_padding=(
            "rank",
            "alpha",
            "layer_ranks",
            "layers",
            "placement",
            "target_bottleneck",
            "sources",
            "fusion_layers",
            "fusion",
        ),  # rows of FusedRows (trainables/fused/rows.py)
        per_layer_ranks=False,
    )
)


def _lora_grow(config: MethodConfig, shape: BackboneShape) -> ParamCount:
    if config.layer_ranks is not None:
        raise ConfigError(
            f"layer_ranks={config.layer_ranks!r} is not supported for method='lora_grow' "
            "(one rank grows everywhere); use layers"
        )
    n = len(method_layers(config, shape.num_layers))
    total = n * lora_params_per_layer(config.rank, config.placement, shape)  # at its largest rank
    return ParamCount(total, total + GROWTH_STATE_PARAMS)


register_facts(
    MethodFacts(
        name="lora_grow",
        count=_lora_grow,
        lr_range=(1e-4, 1e-2),  # as LoRA
        knobs=(*_LORA[:4], "start_rank", "grow_step", "grow_patience"),
        size_knob="rank",
        fused_padding=None,
        per_layer_ranks=False,
    )
)


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


register_facts(
    MethodFacts(
        name="autopeft",
        count=_autopeft,
        lr_range=(1e-4, 3e-3),  # its modules are adapters, prefixes and LoRA
        knobs=("layer_modules", *_AUTOPEFT_SIZES, "rank", "alpha", "placement"),
        size_knob=None,
        fused_padding=None,
        per_layer_ranks=False,
    )
)

if set(METHOD_FACTS.names()) != set(METHODS):
    raise ImportError(f"methods without facts: {sorted(set(METHODS) - set(METHOD_FACTS.names()))}")

FUSABLE_METHODS = tuple(name for name in METHOD_FACTS if METHOD_FACTS.get(name).fusable)
"""Methods whose trials train as rows of one fused model (trainables.fused): read by the fused
model, the pool, ``tuner.train --fuse`` and ``tuner.run --fuse``."""
POOLED_BY_DEFAULT = tuple(n for n in METHOD_FACTS if METHOD_FACTS.get(n).pools_by_default)
"""Methods ``tuner.run`` pools on a GPU without ``--fuse``: a study of these alone pools."""

__all__ = ["FUSABLE_METHODS"]  # importing the module registers; read the facts from METHOD_FACTS
