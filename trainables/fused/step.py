"""One training step of the fused model's K rows (graphed or eager, by the training core's
:class:`~trainables.training.steps.TrainStep`), their losses, and their evaluation."""

from __future__ import annotations

from collections.abc import Sequence
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
from trainables.prepared import PreparedData
from trainables.train_config import TrainConfig
from trainables.training.batching import Batch
from trainables.training.plan import FitPlan, graphable
from trainables.training.report import Scores, final_splits
from trainables.training.steps import TrainStep


class FusedStep:
    """One training step of a fused model's K rows, graphed where it can (one CUDA graph per
    batch shape): the sum of the trials' mean losses backward, clipping and AdamW per row.

    Each row's learning rate (:attr:`lr`, which the caller fills before every step: a row at
    0 does not move), weight decay and clipping are set by :meth:`set_row`; a row set again
    starts over (its AdamW state zeroed), as a new trial's. ``pack``: batches are packed rows
    (:mod:`trainables.training.packed`), which take a 3-d attention mask (transformers 4).
    :meth:`select` picks the rows the next steps' batches hold (all, until called): the others get
    no forward, zero gradients and (at a zero learning rate) no update. A graphed step keeps its
    shape, so it computes a row count of :func:`row_buckets` (the trials' rows and idle ones), one
    set of graphs per count: a pool's group with 3 trials in 16 rows computes 4 rows, not 16.
    """

    def __init__(
        self, model: FusedLoRA, first: TrainConfig, plan: FitPlan, *, task_kind: str
    ) -> None:
        k, device = model.trials, plan.device
        self.model = model
        self.lr = torch.zeros(k, device=device)
        self.pack = MASK_3D and getattr(model, "packs", True)
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
        self._buckets = row_buckets(k)
        # the rows the steps compute (None: all); graphed, a static index per row count
        self._rows: torch.Tensor | None = None
        self._chosen: list[int] | None = None  # what select chose last
        self._index = {n: torch.zeros(n, dtype=torch.long, device=device)
                       for n in self._buckets if n < k and self._graphed}  # fmt: skip
        self._step = TrainStep(
            self._body, self._optimizer, [model.theta], graphed=self._graphed, device=device,
            batch_sizes=None if self.pack else [n * first.batch_size for n in self._buckets],
        )  # fmt: skip

    def select(self, active: Sequence[int]) -> list[int]:
        """The rows the next steps compute, in order, for trials in rows ``active``: those, and
        when graphed idle ones up to the next count of :func:`row_buckets` (an idle row's batch
        part is empty: its rows carry an ignored label)."""
        k = self.model.trials
        rows = rows_to_compute(active, k, graphed=self._graphed)
        if rows == self._chosen:
            return rows
        self._chosen = rows
        if len(rows) == k:
            self._rows = None
        elif self._graphed:  # a graph reads its row count's index: refill it in place
            self._rows = self._index[len(rows)]
            self._rows.copy_(torch.tensor(rows))
        else:
            self._rows = torch.tensor(rows, device=self._device)
        return rows

    def add_losses(self, losses: torch.Tensor, into: torch.Tensor) -> None:
        """Add a step's losses (of the rows :meth:`select` chose) to ``into [K]``, on the device."""
        if self._rows is None:
            into += losses
        else:
            into.index_add_(0, self._rows, losses)

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
        return self._step(batch, variant=self._row_count())

    def _row_count(self) -> int:
        return self.model.trials if self._rows is None else len(self._rows)

    @property
    def graphed(self) -> bool:
        return self._graphed

    @property
    def captured(self) -> int:
        """Batch shapes whose step runs from a CUDA graph."""
        return self._step.captured

    @property
    def capture_s(self) -> float:
        """Seconds spent capturing graphs so far (every row count's)."""
        return self._step.capture_s

    @property
    def off_reason(self) -> str | None:
        """Why graphs were turned off; None while on, or eager."""
        return self._step.off_reason

    def _body(self, batch: Batch) -> torch.Tensor:
        with autocast(self._precision, self._device, cache=not self._graphed):
            logits = self.model(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                                slots=self._slots, rows=self._rows)  # fmt: skip
        losses = fused_losses(logits, batch.labels, self._task_kind)
        extra = getattr(self.model, "row_regularization", lambda rows: None)(self._rows)
        (losses.sum() if extra is None else losses.sum() + extra.sum()).backward()
        theta = self.model.theta
        clip_rows_(cast(torch.Tensor, theta.grad), self._max_norm)
        self._optimizer.step()
        return losses.detach()


def rows_to_compute(active: Sequence[int], k: int, *, graphed: bool) -> list[int]:
    """The rows of ``k`` a step computes for trials in rows ``active``: those, and when graphed
    the first idle ones up to the next count of :func:`row_buckets`."""
    rows = sorted(active)
    if not graphed:
        return rows
    size = next(n for n in row_buckets(k) if n >= len(rows))
    taken = set(rows)
    idle = [i for i in range(k) if i not in taken]
    return sorted(rows + idle[: size - len(rows)])


def row_buckets(k: int) -> tuple[int, ...]:
    """The row counts a graphed step of ``k`` rows computes: the powers of two below ``k``, and
    ``k`` (a step computes at most twice its trials' rows)."""
    return (*(2**i for i in range(k.bit_length()) if 2**i < k), k)


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


def final_scores(
    model: FusedLoRA | FusedRows,
    data: PreparedData,
    rows: list[int],
    train: TrainConfig,
    device: torch.device | str | None = None,
    *,
    batch_size: int | None = None,
) -> list[Scores]:
    """Each of ``rows``' metrics on the splits its trial's final metrics score (the test split
    and the extra sets, :func:`~trainables.training.report.final_splits`), by split name, at
    ``batch_size`` examples a batch (default ``train``'s evaluation batch size) and ``train``'s
    precision; every batch runs once for all the rows, as :func:`evaluate_fused` runs dev."""
    if not rows:
        return []
    scored = {name: evaluate_fused(model, split, task_kind=data.task_kind, metric=data.metric,
                                   batch_size=batch_size or train.eval_batch_size, device=device,
                                   precision=train.precision, rows=rows)
              for name, split in final_splits(data).items()}  # fmt: skip
    return [{name: results[i][1] for name, results in scored.items()} for i in range(len(rows))]


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


__all__ = [
    "FusedStep",
    "evaluate_fused",
    "final_scores",
    "fused_losses",
    "row_buckets",
    "rows_to_compute",
]
