"""One training step of the fused model's K rows (graphed or eager, by the training core's
:class:`~trainables.training.steps.TrainStep`), their losses, and their evaluation."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data.encoded import Encoded
from trainables.fused.batches import IGNORE_INDEX
from trainables.fused.model import FusedLoRA
from trainables.fused.optim import RowAdamW, clip_rows_
from trainables.fused.rows import FusedRows
from trainables.inference import autocast, predict, score
from trainables.model import MASK_3D
from trainables.train_config import TrainConfig
from trainables.training.batching import Batch
from trainables.training.plan import FitPlan, graphable
from trainables.training.steps import TrainStep


class FusedStep:
    """One training step of a fused model's K rows, graphed where it can (one CUDA graph per
    batch shape): the sum of the trials' mean losses backward, clipping and AdamW per row.

    Each row's learning rate (:attr:`lr`, which the caller fills before every step: a row at
    0 does not move), weight decay and clipping are set by :meth:`set_row`; a row set again
    starts over (its AdamW state zeroed), as a new trial's. ``pack``: batches are packed rows
    (:mod:`trainables.training.packed`), which take a 3-d attention mask (transformers 4).
    ``rows``: the rows the next steps' batches hold (None: all), for eager steps only: the others
    get no forward, zero gradients and (at a zero learning rate) no update.
    """

    def __init__(
        self, model: FusedLoRA, first: TrainConfig, plan: FitPlan, *, task_kind: str
    ) -> None:
        k, device = model.trials, plan.device
        self.model = model
        self.lr = torch.zeros(k, device=device)
        self.pack = MASK_3D and getattr(model, "packs", True)
        self.rows: list[int] | None = None
        self._max_norm = torch.zeros(k, device=device)
        self._decay = torch.zeros_like(model.theta)
        self._lr_scale = torch.ones_like(model.theta)
        self._optimizer = RowAdamW(
            model.theta, lr=self.lr, lr_scale=self._lr_scale, decay=self._decay
        )
        self._precision = model.autocast_precision(first.precision)
        self._slots = first.batch_size if self.pack else None
        self._task_kind = task_kind
        self._graphed = graphable(model, first, plan)
        self._device = device
        self._step = TrainStep(
            self._body, self._optimizer, [model.theta], graphed=self._graphed, device=device,
            batch_size=None if self.pack else k * first.batch_size,
        )  # fmt: skip

    def set_row(self, row: int, config: TrainConfig) -> None:
        """Row ``row`` trains with ``config``'s learning rate (its head's scaled), weight decay and
        clipping, from a fresh AdamW state."""
        with torch.no_grad():
            self.lr[row] = config.lr
            self._lr_scale[row] = 1 + (config.head_lr / config.lr - 1) * self.model.head_mask
            self._decay[row] = config.weight_decay * self.model.decay_mask
            self._max_norm[row] = config.grad_clip
        self._optimizer.reset_row(row)

    def __call__(self, batch: Batch) -> torch.Tensor:
        """One step on ``batch`` (host tensors); each trial's loss ``[K]`` on the device, valid
        until the next step."""
        return self._step(batch)

    @property
    def graphed(self) -> bool:
        return self._graphed

    @property
    def captured(self) -> int:
        """Batch shapes whose step runs from a CUDA graph."""
        return self._step.captured

    @property
    def off_reason(self) -> str | None:
        """Why graphs were turned off; None while on, or eager."""
        return self._step.off_reason

    def _body(self, batch: Batch) -> torch.Tensor:
        with autocast(self._precision, self._device, cache=not self._graphed):
            logits = self.model(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                                slots=self._slots, rows=self.rows)  # fmt: skip
        losses = fused_losses(logits, batch.labels, self._task_kind)
        extra = getattr(self.model, "row_regularization", lambda rows: None)(self.rows)
        (losses.sum() if extra is None else losses.sum() + extra.sum()).backward()
        theta = self.model.theta
        clip_rows_(cast(torch.Tensor, theta.grad), self._max_norm)
        self._optimizer.step()
        return losses.detach()


def fused_losses(logits: torch.Tensor, labels: torch.Tensor, task_kind: str) -> torch.Tensor:
    """Each trial's mean task loss ``[K]`` over its real rows (dummy rows carry IGNORE_INDEX, or
    NaN for regression), from ``logits [K, B, C]`` and ``labels [K*B]``."""
    k = logits.shape[0]
    logits = logits.float()
    if task_kind == "regression":
        target = labels.view(k, -1)
        real = ~torch.isnan(target)
        err = (logits.squeeze(-1) - torch.where(real, target, 0.0)) ** 2 * real
    else:
        real = (labels != IGNORE_INDEX).view(k, -1)
        err = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels, reduction="none",
            ignore_index=IGNORE_INDEX,
        ).view(k, -1)  # fmt: skip
    return err.sum(dim=1) / real.sum(dim=1).clamp(min=1)


def evaluate_fused(
    model: FusedLoRA | FusedRows,
    data: Encoded,
    *,
    task_kind: str,
    metric: str,
    batch_size: int,
    device: torch.device | str | None = None,
    precision: str = "auto",
    rows: list[int] | None = None,
) -> list[tuple[float, dict[str, float]]]:
    """Each trial's (or each of ``rows``') ``(mean loss, metrics)`` on ``data``, as
    ``inference.evaluate`` gives one model's; every dev batch runs once for all of them."""
    every = _EveryTrial(model, rows)
    logits = predict(every, data, batch_size=batch_size, device=device,
                     precision=model.autocast_precision(precision))  # fmt: skip
    return [score(logits[:, k], data, task_kind=task_kind, metric=metric) for k in range(every.k)]


class _EveryTrial(nn.Module):
    """``model`` on one batch for all its trials (or ``rows``): ``[B, T]`` in,
    ``[B, K, num_labels]`` out."""

    def __init__(self, model: FusedLoRA | FusedRows, rows: list[int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.rows = rows
        self.k = model.trials if rows is None else len(rows)

    def forward(self, input_ids, attention_mask, token_type_ids=None):  # type: ignore[no-untyped-def]
        k = self.k
        types = None if token_type_ids is None else token_type_ids.repeat(k, 1)
        logits = self.model(input_ids.repeat(k, 1), attention_mask.repeat(k, 1), types,
                            rows=self.rows)  # fmt: skip
        return logits.transpose(0, 1)


__all__ = ["FusedStep", "evaluate_fused", "fused_losses"]
