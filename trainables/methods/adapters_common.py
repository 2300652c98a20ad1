"""Shared translation from ``MethodConfig`` knobs to adapters 1.3.0 configs."""

from __future__ import annotations

import contextlib
import logging
import math
import types
from collections.abc import Iterator

import adapters
import torch
from adapters import LoRAConfig
from adapters.methods.prefix_tuning import PrefixTuning
from torch import nn

from search_spaces.accounting import adapters_lora, method_layers
from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig

# placement -> LoRAConfig switches; adapters' LoRA reaches q/k/v and the two FFN linears only
_LORA_PLACEMENTS = {
    "attn_qv": {"selfattn_lora": True, "attn_matrices": ["q", "v"]},
    "ffn": {"selfattn_lora": False, "intermediate_lora": True, "output_lora": True},
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
    """The ``LoRAConfig`` switches of ``placement`` (adapters' LoRA: attn_qv or ffn only)."""
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


def prefixes_on_device(bert: nn.Module) -> int:
    """Let adapters' prefix tuning run inside a CUDA graph; returns how many prefixes changed.

    ``PrefixTuning.forward`` builds its position ids on the host (``torch.arange(...).to(device)``)
    every step: a copy the host waits for, which graph capture cannot hold. The ids become a
    buffer that moves with the module (non-persistent: not saved, not counted); the forward is
    adapters' own otherwise (adapters 1.3.0, ``methods/prefix_tuning.py``)."""
    changed = 0
    for module in bert.modules():
        if isinstance(module, PrefixTuning):
            ids = torch.arange(module.config.prefix_length).unsqueeze(0)
            module.register_buffer("position_ids", ids, persistent=False)
            module.forward = types.MethodType(_prefix_forward, module)
            changed += 1
    return changed


def _prefix_forward(self: PrefixTuning, batch_size: int) -> tuple[torch.Tensor, ...]:
    embs = self.wte(self.position_ids.expand(batch_size, -1))
    key_values = self.control_trans(embs)  # batch x prefix_length x n_layers * 2 * input_size
    key_values = key_values.view(
        batch_size, self.config.prefix_length, self.n_layers * 2, self.n_heads,
        self.n_embd_per_head,
    )  # fmt: skip
    key_values = self.dropout(key_values)
    # n_layers * (2 x batch_size x n_heads x prefix_length x n_embd_per_head)
    return key_values.permute(2, 0, 3, 1, 4).split(2)
