"""The batches of a fused step: each trial's own rows (its own data order), stacked and padded or
packed (:mod:`trainables.training.packed`), with dummy rows where a trial has fewer than the
step's widest; and each trial's counts of rows and tokens."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from trainables.data.encoded import Encoded
from trainables.train_config import TrainConfig
from trainables.training import packed
from trainables.training.batching import Batch, collate, epoch_plan

IGNORE_INDEX = -100  # a dummy row's class label (cross-entropy skips it); regression uses NaN
Counts = list[tuple[int, int, int]]  # per trial: samples, real tokens, padded tokens


def fused_batches(
    data: Encoded,
    configs: Sequence[TrainConfig],
    *,
    epoch: int,
    pack: bool = False,
    pin_memory: bool = False,
) -> Iterator[tuple[Batch, list[tuple[int, int, int]]]]:
    """The fused batches of ``epoch``, made one at a time (while the GPU runs the step before):
    step i holds each trial's batch i of its own plan (its seed). Padded: stacked and padded to
    the longest row of all, a trial whose batch is shorter than the step's widest (its short
    last one) filled with dummy rows. ``pack``: each trial's sentences packed into rows
    (:func:`trainables.training.packed.pack`, ``batch_size`` label slots a trial). Each comes with
    ``(samples, real tokens, padded tokens)`` per trial, dummy rows not counted."""
    first = configs[0]
    plans = [
        epoch_plan(data.lengths, batch_size=first.batch_size, seed=c.seed, epoch=epoch,
                   length_grouping=first.length_grouping)
        for c in configs
    ]  # fmt: skip
    for parts in zip(*plans, strict=True):
        batch, counts = step_batch(data, list(parts), pack=pack, slots=first.batch_size)
        yield pinned(batch) if pin_memory else batch, counts


def step_batch(
    data: Encoded, parts: list[np.ndarray], *, pack: bool, slots: int
) -> tuple[Batch, list[tuple[int, int, int]]]:
    """One fused step's batch of trial k's rows ``parts[k]``: packed (:func:`.packed.pack`,
    ``slots`` label slots a trial) or padded (:func:`padded_step`)."""
    if pack:
        return packed.pack(data, parts, slots=slots, ignore=IGNORE_INDEX)
    return padded_step(data, parts)


def padded_step(data: Encoded, parts: list[np.ndarray]) -> tuple[Batch, list[tuple[int, int, int]]]:
    """One fused step's batch, unpacked: trial k's rows ``parts[k]`` stacked and padded to the
    longest row of all; a trial with fewer rows than the widest (its epoch's short last batch,
    or none: an idle trial) filled with dummy rows, which carry an ignored label."""
    width = max(len(p) for p in parts)
    rows = np.concatenate([np.resize(p, width) if len(p) else np.zeros(width, np.int64)
                           for p in parts])  # fmt: skip
    batch = collate(data, rows)
    dummy = np.concatenate([np.arange(width) >= len(p) for p in parts])
    if dummy.any():
        batch.labels[torch.from_numpy(dummy)] = (
            float("nan") if batch.labels.is_floating_point() else IGNORE_INDEX
        )
    padded = batch.input_ids.shape[1]
    counts = [(len(p), int(data.lengths[p].sum()), len(p) * padded) for p in parts]
    return batch, counts


def pinned(batch: Batch) -> Batch:
    types = batch.token_type_ids
    return Batch(batch.input_ids.pin_memory(), batch.attention_mask.pin_memory(),
                 None if types is None else types.pin_memory(), batch.labels.pin_memory(),
                 batch.num_tokens)  # fmt: skip


__all__ = ["IGNORE_INDEX", "fused_batches", "padded_step", "pinned", "step_batch"]
