"""AdaLoRA's per-step hook, peft's numbers at a fraction of its launches.

peft's ``AdaLoraModel.update_and_allocate`` walks every named parameter of the model each step and
updates each LoRA tensor's importance averages with ten kernels of its own (~1,100 launches
a step on MiniLM with LoRA on every linear), and in the final phase builds each ``lora_E`` mask
from a Python list and copies it to the device every step. Once the step itself replays from a
CUDA graph (a few launches) that hook is most of AdaLoRA's step. :class:`RankStep` does the same
arithmetic in the same order as ``torch._foreach`` kernels over the cached tensor lists, and masks
the final phase with masks built once on the device; the reallocations themselves (every
``deltaT`` steps, and the one that fixes the ranks) stay peft's own. tests/test_adalora.py checks
importance averages, rank patterns and weights against peft's hook step by step.
"""

from __future__ import annotations

from typing import Any

import torch


class RankStep:
    """``hook(global_step)`` for an AdaLoRA model (peft's ``AdaLoraModel``, ``model.base_model``
    of the ``PeftModel``): what its ``update_and_allocate`` does, faster."""

    def __init__(self, adalora: Any) -> None:
        self.adalora = adalora
        name = adalora.trainable_adapter_name
        self.config = adalora.peft_config[name]
        # the tensors peft's RankAllocator scores, under the names it keys them by
        self.named = [(n, p) for n, p in adalora.model.named_parameters()
                      if "lora_" in n and name in n]  # fmt: skip
        self.lora_e = [(n, p) for n, p in self.named if f"lora_E.{name}" in n]
        self._masks: list[torch.Tensor] | None = None
        self._pattern: Any = None  # the rank pattern the masks were built from

    def __call__(self, global_step: int) -> None:
        config, allocator = self.config, self.adalora.rankallocator
        final = config.total_step - config.tfinal
        if global_step < final:
            self._update_importance(allocator)
            budget, reallocate = allocator.budget_schedule(global_step)
            if reallocate:
                pattern = allocator.mask_to_budget(self.adalora.model, budget)
                if pattern:
                    config.rank_pattern = pattern
        elif global_step == final:
            self.adalora.update_and_allocate(global_step)  # fixes the ranks: peft's own, once
        else:
            self._mask_final(config.rank_pattern)

    def _update_importance(self, allocator: Any) -> None:
        """peft's ``RankAllocator.update_ipt``: ipt = |p * grad|, then the two moving averages,
        each term computed as peft computes it (a product, then a sum: the same rounding)."""
        names = [n for n, _ in self.named]
        params = [p.detach() for _, p in self.named]
        grads = [p.grad for _, p in self.named]
        for n, p in zip(names, params, strict=True):
            if n not in allocator.ipt:
                allocator.ipt[n] = torch.zeros_like(p)
                allocator.exp_avg_ipt[n] = torch.zeros_like(p)
                allocator.exp_avg_unc[n] = torch.zeros_like(p)
        b1, b2 = allocator.beta1, allocator.beta2
        with torch.no_grad():
            ipt = torch._foreach_abs(torch._foreach_mul(params, grads))
            avg = [allocator.exp_avg_ipt[n] for n in names]
            avg = torch._foreach_add(torch._foreach_mul(avg, b1), torch._foreach_mul(ipt, 1 - b1))
            spread = torch._foreach_abs(torch._foreach_sub(ipt, avg))
            unc = [allocator.exp_avg_unc[n] for n in names]
            unc = torch._foreach_add(torch._foreach_mul(unc, b2),
                                     torch._foreach_mul(spread, 1 - b2))  # fmt: skip
        for n, i, a, u in zip(names, ipt, avg, unc, strict=True):
            allocator.ipt[n], allocator.exp_avg_ipt[n], allocator.exp_avg_unc[n] = i, a, u

    def _mask_final(self, pattern: dict[str, list[bool]]) -> None:
        """peft's ``mask_using_rank_pattern``, its masks made once on the device."""
        if self._masks is None or self._pattern is not pattern:
            key = next(iter(pattern))
            name = self.adalora.trainable_adapter_name
            short = name not in key  # peft may key the pattern without the adapter's name
            self._masks = [
                torch.tensor(pattern[n.replace(f".{name}", "") if short else n],
                             dtype=torch.bool, device=p.device).unsqueeze(-1)
                for n, p in self.lora_e
            ]  # fmt: skip
            self._pattern = pattern
        with torch.no_grad():
            for (_, p), mask in zip(self.lora_e, self._masks, strict=True):
                p.masked_fill_(~mask, 0.0)
