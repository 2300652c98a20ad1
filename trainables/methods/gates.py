"""UniPELT's gates averaged over a row's real tokens, as the method means, not over its padding.

adapters computes each UniPELT gate (LoRA's, the bottleneck adapter's, prefix tuning's) as
``mean(sigmoid(gate(x)), dim=1)``: the mean over every position of the batch, pads included
(adapters 1.3.0, ``methods/lora.py``, ``methods/modeling.py``, ``methods/prefix_tuning.py``).
Under dynamic padding a row's gate, so its logits, then depend on the other rows of its batch: the
same sentence scores differently alone and padded beside a longer one. UniPELT (Mao et al., ACL
2022, https://arxiv.org/abs/2110.07577) gates a sentence by its own tokens.

Without changing the library, a forward hook on each gate's linear layer writes, at the pad
positions, the logit of the mean over the row's real tokens: adapters' mean over all positions then
equals the masked mean exactly (pads contribute the mean itself), and so does its gradient (each
real token's share is 1/n_real through the pads' values). The hooks read the batch's token mask,
which :class:`trainables.model.PeftClassifier` hands over before each forward
(``MethodHooks.token_mask``). Graph-safe: no host waits, the mask is the step's own input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

EPS = 1e-6  # keeps the logit finite where a gate saturates


class TokenMask:
    """The current batch's ``[B, T]`` token mask (1 on real tokens), shared by a model's gates."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def __call__(self, mask: torch.Tensor) -> None:
        self.mask = mask


def gate_layers(model: nn.Module) -> list[nn.Linear]:
    """adapters' gating layers in ``model``: each gated LoRA's and bottleneck adapter's ``gate``,
    each prefix tuning layer's ``prefix_gates``."""
    layers: list[nn.Linear] = []
    for module in model.modules():
        gate = getattr(module, "gate", None)
        if getattr(module, "use_gating", False) and isinstance(gate, nn.Linear):
            layers.append(gate)
        prefix = getattr(module, "prefix_gates", None)
        if isinstance(prefix, nn.ModuleDict):
            layers.extend(g for g in prefix.values() if isinstance(g, nn.Linear))
    return layers


def masked_gates(model: nn.Module) -> Callable[[torch.Tensor], None]:
    """Hook every gate of ``model`` (:func:`gate_layers`); returns what takes each batch's mask."""
    current = TokenMask()

    def hook(_module: nn.Module, _inputs: object, logits: torch.Tensor) -> torch.Tensor:
        mask = current.mask
        if mask is None or logits.dim() != 3 or tuple(mask.shape) != tuple(logits.shape[:2]):
            return logits
        real = mask.to(torch.bool).unsqueeze(-1)  # [B, T, 1]
        weight = real.to(torch.float32)  # in fp32: under bf16 autocast 1 - EPS would round to 1
        total = (torch.sigmoid(logits.float()) * weight).sum(1, keepdim=True)
        mean = total / weight.sum(1, keepdim=True).clamp_min(1)
        fill = torch.logit(mean.clamp(EPS, 1 - EPS)).to(logits.dtype)
        return torch.where(real, logits, fill)

    layers = gate_layers(model)
    if not layers:
        raise ValueError("masked_gates: the model has no adapters gates (not a UniPELT model)")
    for layer in layers:
        layer.register_forward_hook(hook)
    return current
