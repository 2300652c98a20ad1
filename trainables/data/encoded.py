"""A tokenised split, stored flat (ragged rows as one array plus offsets) so it is cheap to cache,
to put in the Ray object store and to batch with dynamic padding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Encoded:
    """Token ids of N examples. Row ``i`` is ``input_ids[offsets[i]:offsets[i + 1]]``.

    ``token_type_ids`` is ``None`` for single-sentence tasks. ``labels`` is int64 for
    classification and float32 for regression (STS-B).
    """

    input_ids: np.ndarray  # int32, all rows concatenated
    offsets: np.ndarray  # int64, N + 1 entries, offsets[0] == 0
    labels: np.ndarray
    token_type_ids: np.ndarray | None = None  # int8, aligned with input_ids

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) != len(self.labels) + 1:
            raise ValueError(
                f"offsets has {len(self.offsets)} entries for {len(self.labels)} labels"
            )
        if self.offsets[-1] != len(self.input_ids):
            raise ValueError("offsets[-1] must equal len(input_ids)")
        if self.token_type_ids is not None and len(self.token_type_ids) != len(self.input_ids):
            raise ValueError("token_type_ids must align with input_ids")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]]

    def select(self, indices: np.ndarray) -> Encoded:
        """The examples at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[indices]
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.concatenate(
            [np.arange(self.offsets[i], self.offsets[i + 1]) for i in indices]
        ) if len(indices) else np.zeros(0, dtype=np.int64)  # fmt: skip
        types = None if self.token_type_ids is None else self.token_type_ids[gather]
        return Encoded(self.input_ids[gather], offsets, self.labels[indices], types)
