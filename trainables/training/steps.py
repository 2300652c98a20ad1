"""The training step, graphed or eager: one builder for a model trained alone and for the fused
model of K trials (:class:`trainables.fused.step.FusedStep`).

A *body* runs forward, backward, clipping and the optimizer step on a device batch and returns the
detached loss (a scalar alone, one a trial fused). :class:`TrainStep` replays it from one CUDA
graph per batch shape where the plan allows (:mod:`.graphs`), else runs it eagerly and clears the
gradients; either way the caller sees the same numbers, faster.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import nn

from search_spaces.errors import ConfigError
from trainables.inference import autocast, task_loss
from trainables.train_config import TrainConfig
from trainables.training.batching import Batch
from trainables.training.graphs import StepGraphs, capturable_optimizer

Body = Callable[[Batch], torch.Tensor]


class TrainStep:
    """Training steps of ``body`` on host batches: replayed from CUDA graphs when ``graphed``
    (batches of one of ``batch_sizes`` rows; None: of any size), else eager, followed by
    ``hook(index)`` (AdaLoRA's rank reallocation: while the gradients exist) and the gradients
    cleared."""

    def __init__(
        self,
        body: Body,
        optimizer: torch.optim.Optimizer,
        params: list[nn.Parameter],
        *,
        graphed: bool,
        batch_sizes: Collection[int] | None,
        device: torch.device,
        hook: Callable[[int], None] | None = None,
    ) -> None:
        self._body = body
        self._optimizer = optimizer
        self._device = device
        self._hook = hook
        self.graphs = None
        if graphed:
            self.graphs = StepGraphs(body, optimizer, params, batch_sizes=batch_sizes,
                                     device=device)  # fmt: skip

    def __call__(self, batch: Batch, index: int = 0, *, variant: int = 0) -> torch.Tensor:
        """Step ``index`` (0-based) on ``batch``; the loss on the device, valid until the next
        step (consume it, e.g. add it to an accumulator, before calling again). ``variant``: what
        else the body reads that a graph fixes (see :meth:`.graphs.StepGraphs.step`)."""
        if self.graphs is not None:  # a graph_safe model's hook runs between the steps
            loss = self.graphs.step(batch, variant)
            if self._hook is not None:
                self._hook(index)
            return loss
        loss = self._body(batch.to(self._device))
        if self._hook is not None:
            self._hook(index)
        self._optimizer.zero_grad(set_to_none=True)
        return loss

    @property
    def graphed(self) -> bool:
        """Whether steps replay from CUDA graphs (asked for, and not turned off since)."""
        return self.graphs is not None and self.graphs.off_reason is None

    @property
    def captured(self) -> int:
        """Batch shapes whose step runs from a CUDA graph."""
        return 0 if self.graphs is None else self.graphs.captured

    @property
    def off_reason(self) -> str | None:
        """Why graphs were turned off (a step that waits for the host); None while on, or eager."""
        return None if self.graphs is None else self.graphs.off_reason

    @property
    def capture_s(self) -> float:
        """Seconds spent capturing graphs so far."""
        return 0.0 if self.graphs is None else self.graphs.capture_s

    @property
    def replays(self) -> int:
        """Steps that ran from a graph."""
        return 0 if self.graphs is None else self.graphs.replays


def model_body(
    model: nn.Module,
    forward: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    config: TrainConfig,
    *,
    task_kind: str,
    device: torch.device,
    graphed: bool,
) -> Body:
    """The step body of one model (``forward``: it, or its compiled form): the task loss plus the
    model's ``regularization_loss()`` where it has one (AdaLoRA's orthogonality penalty, dynamic
    fusion's identity pull: trained on, not reported), backward, clipping, the optimizer step."""
    regularization = getattr(model, "regularization_loss", None)

    def body(batch: Batch) -> torch.Tensor:
        with autocast(config.precision, device, cache=not graphed):
            logits = forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        loss = task_loss(logits, batch.labels, task_kind)
        extra = regularization() if regularization is not None else None
        (loss if extra is None else loss + extra).backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, config.grad_clip, foreach=True)
        optimizer.step()
        return loss.detach()

    return body


def adamw(
    trainable: list[nn.Parameter],
    config: TrainConfig,
    *,
    cuda: bool,
    graphs: bool = False,
    head: Collection[nn.Parameter] = (),
) -> torch.optim.AdamW:
    """AdamW over ``trainable``; biases and LayerNorm weights (the 1-d ones, as in nanoGPT) get no
    weight decay, the ``head``'s parameters learn at ``config.head_lr``. ``graphs``: the
    capturable form a CUDA graph can step."""
    if not trainable:
        raise ConfigError("the model has no trainable parameters")
    heads = {id(p) for p in head}
    groups = [
        {"params": [p for p in trainable if (p.ndim >= 2) == decays and (id(p) in heads) == top],
         "weight_decay": config.weight_decay if decays else 0.0,
         "lr": config.head_lr if top else config.lr}
        for top in (False, True) for decays in (True, False)
    ]  # fmt: skip
    groups = [g for g in groups if g["params"]]
    if graphs:
        return capturable_optimizer(groups, trainable[0].device)
    # fused: one kernel for the whole update on CUDA; foreach: batched ops on CPU (fused and
    # foreach are mutually exclusive)
    return torch.optim.AdamW(
        groups, lr=config.lr, fused=cuda or None, foreach=None if cuda else True
    )


__all__ = ["Body", "TrainStep", "adamw", "model_body"]
