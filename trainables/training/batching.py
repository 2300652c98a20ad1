"""Dynamic padding with length-grouped batches.

Contracts the loop relies on:

* :func:`epoch_plan` is a pure function of ``(seed, epoch)`` and the lengths, so a resumed run
  rebuilds the same plan and skips to its batch index exactly; every example appears once per epoch.
* :func:`collate` pads a batch only to its longest row, rounded up to :data:`PAD_MULTIPLE`;
  a graphed run's :func:`epoch_batches` pads a batch of a rare width up to a common one
  (:func:`shared_widths`), so that a shape seen a few times an epoch is not captured for them.
* :func:`eval_plan` sorts by length without shuffling; callers undo the order with the indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainables.data.encoded import Encoded

# bf16 tensor-core tiles are multiples of 8, and rounding keeps the number of distinct shapes
# (each one a recompilation under torch.compile) to max_length / 8.
PAD_MULTIPLE = 8
# Length grouping sorts within chunks of this many batches: wide enough that batches come out
# nearly uniform in length, narrow enough that each chunk is still a random sample of the data.
CHUNK_BATCHES = 50
# A graphed run captures each batch width once, at the cost of about three eager steps and the
# graph's instantiation (about 0.2 s a width for e4_budget's LoRA trial alone on an H100, 0.5 s with
# 16 processes sharing it). Tweets' longest widths (56-96 tokens) come up 2-10 times an epoch of
# 1,363 batches, 1-6 times before ASHA's first decision: a width with fewer full batches than this
# an epoch is padded up to the next width kept, which costs those few batches a replay a little
# wider (docs/BENCHMARKS.md).
MIN_WIDTH_BATCHES = 16
# ...as long as the padding this adds stays within this share of the epoch's padded tokens
# (tweets: 6 widths of 11 kept at +2.0 %; RTE, 78 batches an epoch over 21 widths, all rare,
# keeps 17 at +4.8 %, where merging every one would pad each batch to 256: 3.3x the tokens).
MAX_EXTRA_PADDING = 0.05
PAD_ID = 0  # BERT's [PAD]; masked out by attention_mask, so the value only has to be a valid id


@dataclass(frozen=True)
class Batch:
    """Padded tensors of one batch. ``num_tokens`` counts real (non-pad) tokens."""

    input_ids: torch.Tensor  # int64 [B, T]
    # int64 [B, T], 1 = real token; a packed batch holds segments here (trainables/training/packed.py)
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None  # int64 [B, T]
    labels: torch.Tensor  # int64 [B] (classification) or float32 [B] (regression)
    num_tokens: int

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device: torch.device) -> Batch:
        """On ``device``; the copy is asynchronous when the source is pinned."""
        types = self.token_type_ids
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            None if types is None else types.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.num_tokens,
        )


def epoch_plan(
    lengths: np.ndarray, *, batch_size: int, seed: int, epoch: int, length_grouping: bool = True
) -> list[np.ndarray]:
    """The example indices of each batch of ``epoch``, in training order.

    Without grouping: a seeded permutation cut into batches. With grouping: the permutation is cut
    into chunks of :data:`CHUNK_BATCHES` batches, each chunk sorted by length and cut into
    batches, and the order of all batches shuffled, so short and long batches alternate at random.
    Only the last batch may be short.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    rng = np.random.default_rng((seed, epoch))
    order = rng.permutation(len(lengths))
    if not length_grouping:
        return _cut(order, batch_size)
    chunk = batch_size * CHUNK_BATCHES
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(_cut(part, batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_plan(lengths: np.ndarray, *, batch_size: int) -> list[np.ndarray]:
    """Batches of indices sorted by length, longest first, so an out-of-memory shows at once."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    return _cut(np.argsort(-lengths, kind="stable"), batch_size)


def padded_width(longest: int) -> int:
    """The width a batch whose longest row is ``longest`` tokens pads to by default."""
    return max(PAD_MULTIPLE, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)


def shared_widths(
    lengths: np.ndarray,
    plan: list[np.ndarray],
    *,
    batch_size: int,
    min_batches: int,
    max_extra: float = MAX_EXTRA_PADDING,
) -> list[int]:
    """The width each batch of ``plan`` pads to when a width of fewer than ``min_batches`` full
    batches in the plan pads up to the next width kept above it, widest first, while the tokens
    this adds stay within ``max_extra`` of the full batches' padded tokens (past that a rare width
    is kept: a small training set of long rows does not pad every batch to its longest). A short
    batch (run eager, never captured) keeps its own width."""
    own = [padded_width(int(lengths[idx].max())) for idx in plan]
    full = [w for w, idx in zip(own, plan, strict=True) if len(idx) == batch_size]
    counts = {int(w): int(n) for w, n in zip(*np.unique(full, return_counts=True), strict=True)}
    budget = max_extra * batch_size * sum(full)
    target: dict[int, int] = {}
    kept = 0  # the narrowest width kept so far (none yet)
    for width in sorted(counts, reverse=True):
        extra = counts[width] * batch_size * (kept - width)
        if kept and counts[width] < min_batches and extra <= budget:
            budget -= extra
            target[width] = kept
        else:
            kept = target[width] = width
    return [target[w] if len(idx) == batch_size else w for w, idx in zip(own, plan, strict=True)]


def collate(
    data: Encoded, indices: np.ndarray, *, pin_memory: bool = False, width: int | None = None
) -> Batch:
    """Pad the rows ``indices`` of ``data`` to their longest, rounded up to :data:`PAD_MULTIPLE`,
    or to ``width`` (at least that)."""
    indices = np.asarray(indices, dtype=np.int64)
    lengths = data.lengths[indices]
    width = max(width or 0, padded_width(int(lengths.max()) if len(lengths) else 0))
    mask = np.arange(width)[None, :] < lengths[:, None]
    # the flat position of every real token, row-major, which is the order mask-assignment fills
    source = (data.offsets[indices][:, None] + np.arange(width)[None, :])[mask]
    ids = np.full(mask.shape, PAD_ID, dtype=np.int64)
    ids[mask] = data.input_ids[source]
    types = None
    if data.token_type_ids is not None:
        types = np.zeros(mask.shape, dtype=np.int64)
        types[mask] = data.token_type_ids[source]
    labels = data.labels[indices]
    labels = labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64)
    tensors = [torch.from_numpy(a) for a in (ids, mask.astype(np.int64), labels)]
    type_tensor = None if types is None else torch.from_numpy(types)
    if pin_memory:
        tensors = [t.pin_memory() for t in tensors]
        type_tensor = None if type_tensor is None else type_tensor.pin_memory()
    return Batch(tensors[0], tensors[1], type_tensor, tensors[2], int(lengths.sum()))


def epoch_batches(
    data: Encoded,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    length_grouping: bool = True,
    start: int = 0,
    pin_memory: bool = False,
    min_width_batches: int = 0,
) -> list[Batch]:
    """The padded batches of ``epoch`` from batch ``start`` on, built up front so the step loop
    does no numpy work. ``start`` is the batch index a resumed run continues from.
    ``min_width_batches``: rarer widths padded up (:func:`shared_widths`, over the whole epoch,
    so a resumed run pads as the uninterrupted one); 0 pads each batch to its own width."""
    plan = epoch_plan(
        data.lengths, batch_size=batch_size, seed=seed, epoch=epoch, length_grouping=length_grouping
    )
    if not 0 <= start <= len(plan):
        raise ValueError(f"start={start} is outside the epoch's {len(plan)} batches")
    widths: list[int | None] = [None] * len(plan)
    if min_width_batches > 0 and plan:
        widths = list(shared_widths(data.lengths, plan, batch_size=batch_size,
                                    min_batches=min_width_batches))  # fmt: skip
    return [collate(data, idx, pin_memory=pin_memory, width=w)
            for idx, w in zip(plan[start:], widths[start:], strict=True)]  # fmt: skip


def _cut(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
