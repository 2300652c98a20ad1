"""Sequence packing for fused training steps: each trial's sentences packed into rows of
:data:`WIDTH` tokens, attention kept within each sentence.

Why: SST-2 sentences are ~13 tokens, padded to ~17. The memory-efficient attention kernel works
in 64 x 64 tiles, so one sentence a row leaves most of each tile empty, and attention was a
third of the GPU time of a step of 8 fused trials (docs/BENCHMARKS.md). Packed, 3-4 sentences
share one tile.

A packed batch is a :class:`~trainables.training.batching.Batch` whose ``attention_mask`` holds each
token's *segment*: 0 for padding, else the 1-based number of its sentence within its row.
Rows are trial-major (trial k owns rows ``k*R .. (k+1)*R``); ``labels`` holds ``slots``
entries a trial (``[K * slots]``), trial k's in the order its sentences appear scanning its rows
(row by row, left to right), the unused ones :data:`~trainables.fused.IGNORE_INDEX` (NaN for
regression). On the device, :func:`positions`, :func:`block_mask` and :func:`segment_mean` turn
the segments into what the padded layout had: position ids that restart with every sentence,
attention only between tokens of one sentence, and each sentence's mean hidden state. The
result equals the padded layout's up to float rounding (tested against trials trained alone).
"""

from __future__ import annotations

import numpy as np
import torch

from trainables.data.encoded import Encoded
from trainables.training.batching import PAD_ID, Batch, padded_width

WIDTH = 64  # tokens a packed row holds: one tile of the memory-efficient attention kernel


def rows_bucket(n: int) -> int:
    """``n`` rows rounded up to a power of two or 3/4 of one (1, 2, 3, 4, 6, 8, 12, 16, ...):
    few batch shapes (each a CUDA graph to capture), at most a third of the rows left empty."""
    power = 1 << max(0, (n - 1).bit_length())
    three_quarters = 3 * power // 4
    return three_quarters if power >= 4 and three_quarters >= n else power


def first_fit(lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """First-fit decreasing bin packing: each sequence's ``(row, offset)`` in rows of ``width``
    tokens, sequences laid left to right from offset 0. Every length must be <= ``width``."""
    sizes = lengths.tolist()  # a batch is tens of sequences: plain Python beats numpy calls
    row, offset = [0] * len(sizes), [0] * len(sizes)
    fill: list[int] = []  # tokens used per row
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):  # stable: ties keep order
        r = next((r for r, used in enumerate(fill) if used + sizes[i] <= width), len(fill))
        if r == len(fill):
            fill.append(0)
        row[i], offset[i] = r, fill[r]
        fill[r] += sizes[i]
    return np.array(row, dtype=np.int64), np.array(offset, dtype=np.int64)


def width_for(longest: int) -> int:
    """The packed row width for a step whose longest sequence has ``longest`` tokens."""
    return max(WIDTH, padded_width(longest))


def pack(
    data: Encoded, parts: list[np.ndarray], *, slots: int, ignore: int
) -> tuple[Batch, list[tuple[int, int, int]]]:
    """The packed batch of one fused step: trial k's rows ``parts[k]`` of ``data`` (at most
    ``slots`` of them; none for an idle trial, whose rows are all padding), with ``(samples,
    real tokens, packed tokens)`` per trial."""
    lengths = [data.lengths[p].astype(np.int64) for p in parts]
    width = width_for(max(int(x.max()) for x in lengths if len(x)))
    layouts: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # trials of one seed pack alike
    for x in lengths:
        if x.tobytes() not in layouts:
            layouts[x.tobytes()] = first_fit(x, width)
    placed = [layouts[x.tobytes()] for x in lengths]
    rows = rows_bucket(max(int(r.max()) + 1 for r, _ in placed if len(r)))  # a part may be empty
    # every sequence of every trial: its data row, length, packed row (trial-major) and offset
    source = np.concatenate(parts).astype(np.int64)
    length = np.concatenate(lengths)
    trial = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    row = np.concatenate([r for r, _ in placed]) + trial * rows
    offset = np.concatenate([o for _, o in placed])
    order = np.lexsort((offset, row))  # reading order: trial-major, row by row, left to right
    first_of_row = np.r_[True, row[order][1:] != row[order][:-1]]
    starts = np.flatnonzero(first_of_row)
    segment = np.empty_like(order)
    segment[order] = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    # every token: where it comes from and where it goes
    seq = np.repeat(np.arange(len(source)), length)
    t = np.arange(len(seq)) - np.repeat(np.cumsum(length) - length, length)
    src = data.offsets[source][seq] + t
    dst = (row[seq], offset[seq] + t)
    shape = (len(parts) * rows, width)
    ids = np.full(shape, PAD_ID, dtype=np.int64)
    ids[dst] = data.input_ids[src]
    segments = np.zeros(shape, dtype=np.int64)
    segments[dst] = segment[seq] + 1
    types = None
    if data.token_type_ids is not None:
        types = np.zeros(shape, dtype=np.int64)
        types[dst] = data.token_type_ids[src]
    floating = data.labels.dtype.kind == "f"
    labels = np.full((len(parts), slots), np.nan if floating else ignore,
                     dtype=np.float32 if floating else np.int64)  # fmt: skip
    rank = np.empty_like(order)  # each sequence's place among its trial's, in reading order
    rank[order] = np.arange(len(order))
    firsts = np.cumsum([0, *(len(p) for p in parts)])[:-1]
    labels[trial, rank - firsts[trial]] = data.labels[source]
    batch = Batch(
        torch.from_numpy(ids), torch.from_numpy(segments),
        None if types is None else torch.from_numpy(types),
        torch.from_numpy(labels.reshape(-1)), int(length.sum()),
    )  # fmt: skip
    counts = [(len(p), int(x.sum()), rows * width) for p, x in zip(parts, lengths, strict=True)]
    return batch, counts


def positions(segments: torch.Tensor) -> torch.Tensor:
    """Position ids ``[N, W]`` that restart at 0 with every sentence (padding: arbitrary)."""
    cols = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    return cols - torch.cummax(torch.where(_starts(segments), cols, 0), dim=1).values


def block_mask(segments: torch.Tensor) -> torch.Tensor:
    """``[N, W, W]``: token i attends to token j when they are of one sentence (padding attends
    to padding, so that no token's attention row is empty)."""
    return (segments[:, :, None] == segments[:, None, :]).long()


def segment_mean(
    hidden: torch.Tensor, segments: torch.Tensor, *, trials: int, slots: int
) -> torch.Tensor:
    """Each sentence's mean hidden state, fp32 ``[trials * slots, d]`` in ``labels`` order, from
    ``hidden [N, W, d]``; a slot no sentence fills gets zeros. One batched matmul per trial's
    rows (no atomics, no host sync), accumulated in fp32."""
    real = segments.view(trials, -1) > 0
    seq = torch.where(real, _starts(segments).view(trials, -1).cumsum(dim=1) - 1, -1)
    slot = torch.arange(slots, device=segments.device)
    members = slot[None, :, None] == seq[:, None, :]  # [K, slots, R*W]
    with torch.autocast(segments.device.type, enabled=False):
        sums = torch.bmm(members.to(hidden.dtype), hidden.reshape(trials, -1, hidden.shape[-1]))
    counts = members.sum(dim=2, dtype=torch.float32).clamp(min=1.0)
    return (sums.float() / counts[..., None]).view(trials * slots, -1)


def _starts(segments: torch.Tensor) -> torch.Tensor:
    """Where a sentence begins: a real token whose segment differs from its left neighbour's."""
    changed = torch.ones_like(segments, dtype=torch.bool)
    changed[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return changed & (segments > 0)
