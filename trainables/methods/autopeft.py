"""AutoPEFT (Zhou et al., 2024): a per-layer choice among a serial adapter, a parallel adapter, a
prefix, LoRA or nothing, built as one adapters ``ConfigUnion``.

``layer_modules`` names one module per encoder layer; each module type has one size
(``bottleneck``, ``parallel_bottleneck``, ``prefix_length``, ``rank``), and each member of the
union carries the ``leave_out`` of the layers that chose another module. adapters 1.3.0 accepts
two bottleneck configs at the same location when their ``leave_out`` sets are disjoint, which they
are by construction. The search over ``layer_modules`` is :func:`search_spaces.spaces.autopeft_space`.
"""

from __future__ import annotations

from adapters import ConfigUnion, LoRAConfig, ParBnConfig, PrefixTuningConfig, SeqBnConfig
from torch import nn

from search_spaces.accounting import autopeft_modules
from search_spaces.method_config import MethodConfig
from trainables.methods.adapters_common import init_adapters, lora_switches, reduction_factor
from trainables.methods.bottleneck import add_trainable_adapter, flattening_adjustment
from trainables.methods.registry import BuildContext, register_method
from trainables.model import MethodHooks


def union_config(config: MethodConfig, num_layers: int, hidden: int) -> ConfigUnion:
    """One union member per module type that some layer chose, left out of the other layers."""
    modules = autopeft_modules(config, num_layers)

    def leave_out(kind: str) -> list[int]:
        return [i for i, m in enumerate(modules) if m != kind]

    members = {
        "serial": lambda: SeqBnConfig(
            reduction_factor=reduction_factor(hidden, config.bottleneck),
            leave_out=leave_out("serial"),
        ),
        "parallel": lambda: ParBnConfig(
            reduction_factor=reduction_factor(hidden, config.parallel_bottleneck),
            leave_out=leave_out("parallel"),
        ),
        "prefix": lambda: PrefixTuningConfig(
            prefix_length=config.prefix_length,
            flat=not config.prefix_reparam,
            leave_out=leave_out("prefix"),
        ),
        "lora": lambda: LoRAConfig(
            r=config.rank,
            alpha=config.alpha,
            leave_out=leave_out("lora"),
            **lora_switches(config.placement),
        ),
    }
    return ConfigUnion(*(make() for kind, make in members.items() if kind in modules))


def build_autopeft(
    bert: nn.Module, config: MethodConfig, context: BuildContext
) -> tuple[nn.Module, MethodHooks]:
    """The modules ``layer_modules`` names, one adapters setup trained as a whole."""
    bert = init_adapters(bert)
    union = union_config(config, context.shape.num_layers, context.shape.hidden)
    hooks = MethodHooks(stored_adjustment=lambda: flattening_adjustment(bert))
    return add_trainable_adapter(bert, union, hooks)


register_method(
    "autopeft",
    paper="https://arxiv.org/abs/2301.12132",
    library="adapters",
    builder=build_autopeft,
    summary="AutoPEFT: per-layer serial/parallel adapter, prefix, LoRA or nothing (one ConfigUnion)",
)
