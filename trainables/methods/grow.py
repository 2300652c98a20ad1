"""Rank growth on plateau (``lora_grow``): LoRA that starts small and grows when the dev loss stalls.

The rule (documented in docs/STUDIES.md): every adapted linear starts with ``start_rank`` active
rank components. After each dev evaluation the loop calls ``model.plateau_hook(dev_loss)``; an
evaluation whose loss is not below the best so far counts as a stall, and after
``grow_patience`` stalls in a row every linear gains ``grow_step`` components (up to ``rank``),
the stall count restarts and the hook returns True.

The tensors are allocated at ``rank`` from the start and the inactive components are left out of
the forward pass (sliced away, so they get zero gradients). A new component starts as LoRA's does
(A random, B zero), so growing leaves the function unchanged; the trainable count is the largest
size, exact from the first step; a checkpoint resumes at the grown rank; and an optimizer need
not be rebuilt (zero gradients leave the new components' Adam moments at zero), although
rebuilding it on True is also correct. The scale ``alpha / rank`` is fixed at the largest rank,
so existing components keep their weight when the rank grows.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from search_spaces.accounting import GROWTH_STATE_PARAMS, method_layers
from search_spaces.method_config import PLACEMENTS, MethodConfig
from trainables.methods.extended import ExtendedEncoder
from trainables.methods.lora import MODULE_PATHS
from trainables.methods.registry import BuildContext, register_method
from trainables.model import MethodHooks

RANK, BEST_LOSS, STALLS = range(GROWTH_STATE_PARAMS)  # entries of the frozen growth state


class GrowthState(nn.Module):
    """The active rank, the best dev loss so far and the stalls since: one frozen 3-vector, saved
    with the method weights (a resumed trial keeps its grown rank)."""

    def __init__(self, config: MethodConfig) -> None:
        super().__init__()
        self.start_rank, self.max_rank = config.start_rank, config.rank
        self.step, self.patience = config.grow_step, config.grow_patience
        initial = torch.tensor([float(config.start_rank), math.inf, 0.0])
        self.state = nn.Parameter(initial, requires_grad=False)
        self._cached: tuple[int, int] = (-1, config.start_rank)  # (tensor version, rank)

    @property
    def rank(self) -> int:
        """The active rank, read from the tensor only after it changed (no device sync per call)."""
        version = self.state._version  # bumped by every in-place write: observe, weight loading
        if version != self._cached[0]:
            self._cached = (version, int(self.state[RANK].item()))
        return self._cached[1]

    def observe(self, dev_loss: float) -> bool:
        """Record one dev loss; grow and return True after ``patience`` stalls in a row."""
        rank, best, stalls = (float(v) for v in self.state.tolist())
        if dev_loss < best:  # NaN is never an improvement
            self._write(rank, dev_loss, 0.0)
            return False
        stalls += 1
        if stalls < self.patience or rank >= self.max_rank:
            self._write(rank, best, stalls)
            return False
        self._write(min(rank + self.step, self.max_rank), best, 0.0)
        return True

    def _write(self, rank: float, best: float, stalls: float) -> None:
        with torch.no_grad():
            self.state.copy_(torch.tensor([rank, best, stalls]))


class GrowingLoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B[:, :r] A[:r] x`` with ``r`` the shared active rank."""

    def __init__(self, base: nn.Linear, config: MethodConfig, growth: GrowthState) -> None:
        super().__init__()
        self.base = base
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(config.rank, base.in_features, device=weight.device))
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, config.rank, device=weight.device)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as peft and adapters initialise A
        self.scaling = config.alpha / config.rank
        self._growth = [growth]  # shared by every linear: a list keeps it out of the submodules
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        r = self._growth[0].rank
        return self.scaling * (self.lora_B[:, :r] @ self.lora_A[:r])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        r = self._growth[0].rank
        return out + self.scaling * ((x @ self.lora_A[:r].T) @ self.lora_B[:, :r].T)

    def merge(self) -> None:
        with torch.no_grad():
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True


def build_lora_grow(
    bert: nn.Module, config: MethodConfig, context: BuildContext
) -> tuple[nn.Module, MethodHooks]:
    """LoRA on the linears of ``placement`` in ``layers``, active rank growing on dev plateaus."""
    for param in bert.parameters():
        param.requires_grad = False
    growth = GrowthState(config)
    wrapped = []
    for i in method_layers(config, context.shape.num_layers):
        layer = bert.encoder.layer[i]
        for module in PLACEMENTS[config.placement]:
            parent_path, _, leaf = MODULE_PATHS[module].rpartition(".")
            parent = layer.get_submodule(parent_path)
            linear = GrowingLoRALinear(getattr(parent, leaf), config, growth)
            setattr(parent, leaf, linear)
            wrapped.append(linear)

    def merge() -> None:
        for linear in wrapped:
            linear.merge()

    hooks = MethodHooks(
        merge=merge,
        plateau=growth.observe,
        metrics=lambda: {"active_rank": float(growth.rank)},
    )
    return ExtendedEncoder(bert, growth=growth), hooks


register_method(
    "lora_grow",
    paper="https://arxiv.org/abs/2106.09685",
    library="torch",
    builder=build_lora_grow,
    summary="LoRA (https://arxiv.org/abs/2106.09685) from start_rank, growing when the dev loss plateaus",
)
