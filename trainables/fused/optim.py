"""AdamW and gradient clipping per trial over the fused parameter ``theta [K, P]``: each row gets
the update ``torch.optim.AdamW`` and ``clip_grad_norm_`` would give its trial alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

ADAM_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which the loop uses
ADAM_EPS = 1e-8
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s


class RowAdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW``'s update on one ``[K, P]`` parameter whose rows are K trials, with a
    learning rate (``lr [K]``, a device tensor the caller fills each step), a scale of it per
    number (``lr_scale [K, P]``: a row's head learns at its ``TrainConfig.head_lr``, as its own param
    group would) and a weight decay (``decay [K, P]``) per row. Capturable in a CUDA graph: no host
    reads, state on the device."""

    def __init__(
        self,
        param: nn.Parameter,
        *,
        lr: torch.Tensor,
        lr_scale: torch.Tensor,
        decay: torch.Tensor,
    ) -> None:
        super().__init__([param], {})
        self.lr = lr
        self.lr_scale = lr_scale
        self.decay = decay

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        p, state = self._state()
        beta1, beta2 = ADAM_BETAS
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        step += 1
        lr, count = self.lr[:, None] * self.lr_scale, step[:, None]
        grad = cast(torch.Tensor, p.grad)
        p.mul_(1 - lr * self.decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**count).sqrt()).add_(ADAM_EPS)
        p.sub_(exp_avg / denom * (lr / (1 - beta1**count)))

    @torch.no_grad()
    def reset_row(self, row: int) -> None:
        """Row ``row`` starts over, as a new trial's first step: its moments and step count 0."""
        _, state = self._state()
        for value in state.values():
            value[row] = 0

    def _state(self) -> tuple[nn.Parameter, dict[str, torch.Tensor]]:
        """The parameter and its state, created on first use: a step count per row (each row's
        bias correction), the two moments."""
        (p,) = self.param_groups[0]["params"]
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros(len(p), device=p.device)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        return p, state


def clip_rows_(grad: torch.Tensor, max_norm: torch.Tensor) -> None:
    """``clip_grad_norm_`` per row of ``grad [K, P]``: row k scaled to norm ``max_norm[k]`` at most
    (``max_norm[k] == 0``: not clipped)."""
    norms = grad.pow(2).sum(dim=1).sqrt()
    coef = (max_norm / (norms + CLIP_EPS)).clamp(max=1.0)
    grad.mul_(torch.where(max_norm > 0, coef, torch.ones_like(coef))[:, None])


__all__ = ["RowAdamW", "clip_rows_"]
