"""The zero-shot baseline of sentence-pair regression: the cosine of the two frozen embeddings.

The rule: a task gets it when it is a regression task (``task_kind == "regression"``) with two
text columns (its splits carry ``token_type_ids``); of the registered tasks that is ``glue/stsb``.
Each sentence is embedded alone by the frozen backbone (the masked mean of the last hidden states,
as sentence-transformers pools all-MiniLM-L6-v2), and the cosine of the two embeddings is scored
with the task's own metric against the gold scores, on dev and test: what the backbone knows of
similarity with no training at all. A trial below it learned less than the backbone already knew.

The sentences alone are cut from the pair's tokens, not tokenised again: for a BERT tokenizer
(the only kind the backbones take) ``[CLS] a [SEP] b [SEP]`` holds ``[CLS] a [SEP]`` as type 0
and ``b [SEP]`` as type 1, word pieces being per word. A pair longer than ``max_length`` was
truncated as a pair, so its sides are the truncated ones.
Cached and recorded beside the probe (:mod:`trainables.probe`): ``dev_zero_shot_score``,
``test_zero_shot_score``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from trainables.data.encoded import Encoded
from trainables.metrics import compute
from trainables.prepared import PreparedData

Embed = Callable[[Encoded], np.ndarray]  # a split -> float embeddings [N, d] in its order


def applies(data: PreparedData) -> bool:
    """Whether ``data``'s task gets a zero-shot cosine score (the rule in the module docstring)."""
    return data.task_kind == "regression" and data.dev.token_type_ids is not None


def sides(pairs: Encoded) -> tuple[Encoded, Encoded]:
    """Each pair's first and second sentence as they tokenise alone: ``[CLS] a [SEP]`` and
    ``[CLS] b [SEP]`` (single-sentence splits, ``token_type_ids`` None, the pairs' labels)."""
    if pairs.token_type_ids is None:
        raise ValueError("sides() needs a split of sentence pairs (token_type_ids set)")
    second = pairs.token_type_ids == 1
    starts = np.zeros(len(pairs.input_ids), dtype=bool)
    starts[pairs.offsets[:-1]] = True  # each row's [CLS], which the second sentence borrows
    row = np.repeat(np.arange(len(pairs)), pairs.lengths)
    return _keep(pairs, ~second, row), _keep(pairs, second | starts, row)


def zero_shot_scores(embed: Embed, data: PreparedData) -> dict[str, float]:
    """``dev_zero_shot_score`` and ``test_zero_shot_score``: the task's metric of the cosine of
    ``embed``'s two sentence embeddings against the gold scores."""
    if not applies(data):
        raise ValueError(f"task {data.task!r} ({data.task_kind}) is not a sentence-pair regression")
    out = {}
    for name, split in (("dev", data.dev), ("test", data.test)):
        first, second = (embed(side) for side in sides(split))
        out[f"{name}_zero_shot_score"] = compute(data.metric, cosine(first, second), split.labels)["score"]  # fmt: skip
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``a [N, d]`` and ``b [N, d]`` -> ``[N]`` (float64)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def _keep(pairs: Encoded, mask: np.ndarray, row: np.ndarray) -> Encoded:
    offsets = np.zeros(len(pairs) + 1, dtype=np.int64)
    np.cumsum(np.bincount(row[mask], minlength=len(pairs)), out=offsets[1:])
    return Encoded(pairs.input_ids[mask], offsets, pairs.labels)
