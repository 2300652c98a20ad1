"""Shared translation from ``MethodConfig`` knobs to adapters 1.3.0 configs."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import adapters
from adapters import LoRAConfig
from torch import nn

from search_spaces.accounting import adapters_lora, method_layers
from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig

# placement -> LoRAConfig switches; adapters' LoRA reaches q/k/v and the two FFN linears only
_LORA_PLACEMENTS = {
    "attn_qv": {"selfattn_lora": True, "attn_matrices": ["q", "v"]},
    "ffn": {"selfattn_lora": False, "intermediate_lora": True, "output_lora": True},
    "attn_qv_ffn": {
        "selfattn_lora": True,
        "attn_matrices": ["q", "v"],
        "intermediate_lora": True,
        "output_lora": True,
    },
}


def init_adapters(bert: nn.Module) -> nn.Module:
    """Give a plain ``BertModel`` adapters' methods (``add_adapter``, ``train_adapter``...)."""
    adapters.init(bert)
    return bert


@contextlib.contextmanager
def quiet_activation() -> Iterator[None]:
    """Silence adapters' "adapters available but none are activated" while activating: its
    ``set_active_adapters`` opens a forward context before the new setup is in place, so it warns
    on every build although the setup is active right after."""
    logger = logging.getLogger("adapters.model_mixin")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def reduction_factor(hidden: int, bottleneck: int) -> float:
    """The ``reduction_factor`` for which adapters builds exactly ``bottleneck`` units.

    adapters computes ``int(hidden // factor)``; ``hidden / bottleneck`` can round to one unit
    less in floating point (e.g. 384 / 100), so step the factor down until the floor is exact.
    """
    factor = hidden / bottleneck
    for _ in range(8):  # a few ulps always suffice; the bound only guards against a logic error
        if int(hidden // factor) == bottleneck:
            return factor
        factor = math.nextafter(factor, 0.0)
    raise ConfigError(f"bottleneck={bottleneck} cannot be built on hidden={hidden}")


def leave_out(config: MethodConfig, num_layers: int) -> list[int]:
    """The layers without the method's modules: the complement of ``layers``."""
    kept = set(method_layers(config, num_layers))
    return [i for i in range(num_layers) if i not in kept]


def lora_switches(placement: str) -> dict[str, object]:
    """The ``LoRAConfig`` switches of ``placement`` (adapters' LoRA: no attention.output)."""
    return dict(_LORA_PLACEMENTS[placement])


def lora_config(config: MethodConfig, num_layers: int, *, gated: bool = False) -> LoRAConfig:
    """adapters' LoRA for ``config`` (one rank; ``layer_ranks`` zeros become ``leave_out``)."""
    rank, layers = adapters_lora(config, num_layers)
    return LoRAConfig(
        r=rank,
        alpha=config.alpha,
        leave_out=[i for i in range(num_layers) if i not in layers],
        use_gating=gated,
        **_LORA_PLACEMENTS[config.placement],
    )


__all__ = [
    "init_adapters", "leave_out", "lora_config", "lora_switches", "quiet_activation",
    "reduction_factor",
]  # fmt: skip
