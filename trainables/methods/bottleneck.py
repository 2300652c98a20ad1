"""Bottleneck adapters (Houlsby, Pfeiffer), prefix tuning and UniPELT through adapters."""

from __future__ import annotations

import dataclasses

from adapters import (
    DoubleSeqBnConfig,
    PrefixTuningConfig,
    SeqBnConfig,
    UniPELTConfig,
)
from adapters.methods.prefix_tuning import FlatPrefixTuning, PrefixTuning
from torch import nn

from search_spaces.method_config import MethodConfig
from trainables.methods.adapters_common import (
    init_adapters,
    leave_out,
    lora_config,
    quiet_activation,
    reduction_factor,
)
from trainables.methods.gates import masked_gates
from trainables.methods.registry import BuildContext, register_method
from trainables.model import MethodHooks

ADAPTER_NAME = "target"  # the one trainable adapters module of these methods


def add_trainable_adapter(
    bert: nn.Module, adapter_config: object, hooks: MethodHooks
) -> tuple[nn.Module, MethodHooks]:
    bert.add_adapter(ADAPTER_NAME, config=adapter_config)
    with quiet_activation():
        bert.train_adapter(ADAPTER_NAME)  # freezes the backbone, activates the adapter
    bert.eval()  # train_adapter switches to train mode; the loop decides the mode
    # adapters' prefix tuning makes its ids and mask on the host every step (MethodHooks), flat
    # prefixes too (their mask): FlatPrefixTuning is not a PrefixTuning
    host_tensors = any(isinstance(m, (PrefixTuning, FlatPrefixTuning)) for m in bert.modules())
    return bert, dataclasses.replace(hooks, host_tensors=host_tensors)


def build_bottleneck(
    bert: nn.Module, config: MethodConfig, context: BuildContext
) -> tuple[nn.Module, MethodHooks]:
    """Houlsby (after attention and FFN) or Pfeiffer (after FFN) adapters of width ``bottleneck``."""
    preset = DoubleSeqBnConfig if config.method == "houlsby" else SeqBnConfig
    adapter_config = preset(
        reduction_factor=reduction_factor(context.shape.hidden, config.bottleneck),
        leave_out=leave_out(config, context.shape.num_layers),
    )
    return add_trainable_adapter(init_adapters(bert), adapter_config, MethodHooks())


def prefix_config(config: MethodConfig, num_layers: int) -> PrefixTuningConfig:
    return PrefixTuningConfig(
        prefix_length=config.prefix_length,
        flat=not config.prefix_reparam,
        leave_out=leave_out(config, num_layers),
    )


def flattening_adjustment(bert: nn.Module) -> int:
    """Served minus built size of reparametrised prefixes: the flat prefix replaces the MLP."""
    total = 0
    for module in bert.modules():
        if isinstance(module, PrefixTuning):
            flat = (
                module.config.prefix_length
                * module.n_layers
                * 2
                * module.n_heads
                * module.n_embd_per_head
            )
            total += flat - sum(p.numel() for p in module.parameters())
    return total


def build_prefix(
    bert: nn.Module, config: MethodConfig, context: BuildContext
) -> tuple[nn.Module, MethodHooks]:
    """Prefix tuning: ``prefix_length`` trainable key/value vectors per layer, optionally produced
    by a reparametrisation MLP during training (``prefix_reparam``)."""
    bert = init_adapters(bert)
    hooks = MethodHooks(stored_adjustment=lambda: flattening_adjustment(bert))
    return add_trainable_adapter(bert, prefix_config(config, context.shape.num_layers), hooks)


def build_unipelt(
    bert: nn.Module, config: MethodConfig, context: BuildContext
) -> tuple[nn.Module, MethodHooks]:
    """UniPELT: gated prefix tuning + gated Pfeiffer adapter + gated LoRA in the same layers."""
    n = context.shape.num_layers
    union = UniPELTConfig(
        prefix_tuning=prefix_config(config, n),
        adapter=SeqBnConfig(
            reduction_factor=reduction_factor(context.shape.hidden, config.bottleneck),
            leave_out=leave_out(config, n),
        ),
        lora=lora_config(config, n),  # UniPELTConfig switches the gates on
    )
    bert = init_adapters(bert)
    hooks = MethodHooks(stored_adjustment=lambda: flattening_adjustment(bert))
    bert, hooks = add_trainable_adapter(bert, union, hooks)
    # adapters averages each gate over every position, pads included: over real tokens here
    return bert, dataclasses.replace(hooks, token_mask=masked_gates(bert))


register_method(
    "houlsby",
    paper="https://arxiv.org/abs/1902.00751",
    library="adapters",
    builder=build_bottleneck,
    summary="Houlsby adapters after attention and after the FFN of each layer",
)
register_method(
    "pfeiffer",
    paper="https://arxiv.org/abs/2005.00247",
    library="adapters",
    builder=build_bottleneck,
    summary="Pfeiffer adapter after the FFN of each layer",
)
register_method(
    "prefix",
    paper="https://arxiv.org/abs/2101.00190",
    library="adapters",
    builder=build_prefix,
    summary="prefix tuning: trainable attention keys/values prepended in every layer",
)
register_method(
    "unipelt",
    paper="https://arxiv.org/abs/2110.07577",
    library="adapters",
    builder=build_unipelt,
    summary="UniPELT: gated union of prefix tuning, a Pfeiffer adapter and LoRA",
)
