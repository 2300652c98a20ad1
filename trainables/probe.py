"""The head-only baseline: what the frozen backbone scores through a trained linear head alone.

A linear probe on the backbone's mean-pooled last hidden states (the trials' own head input, the
same tokenised splits), trained full-batch on standardised features. A PEFT trial at or below it
added nothing the head could not learn alone (the study rules: a bug until shown otherwise).
Computed once per (backbone, task, rows, length) on the driver and cached as JSON in the token
cache folder (``baselines/``); every trial then records it (``dev_probe_score``, ``test_probe_score``).
:func:`with_probe` attaches the zero-shot cosine of sentence-pair regression too
(:mod:`trainables.zero_shot`), computed and cached the same way (its own file beside the probe's).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables.backbones import load_backbone
from trainables.data.encoded import Encoded
from trainables.data.tokenize import default_cache_dir
from trainables.inference import predict, score, task_loss
from trainables.model import masked_mean
from trainables.prepared import PreparedData, subsample
from trainables.zero_shot import Embed, applies, zero_shot_scores

STEPS = 300  # full-batch Adam steps: a linear head on a few hundred features converges well before
LR = 1e-2
WEIGHT_DECAY = 1e-4
BATCH = 256  # embedding batches


class _Pooled(nn.Module):
    """The frozen encoder's masked mean of the last hidden states: the head's input."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        return masked_mean(hidden, attention_mask)


def embedder(bert: nn.Module, *, device: str = "cpu") -> Embed:
    """The frozen ``bert``'s pooled embeddings of a split, float32 ``[N, hidden]`` in its order."""
    pooled = _Pooled(bert).to(device).eval()
    return lambda split: predict(pooled, split, batch_size=BATCH, device=device)


def probe_scores(bert: nn.Module, data: PreparedData, *, device: str = "cpu") -> dict[str, float]:
    """``dev_probe_score`` and ``test_probe_score`` of a linear head on the frozen ``bert``."""
    embed = embedder(bert, device=device)
    x = {name: embed(split) for name, split in (("train", data.train), ("dev", data.dev),
                                                 ("test", data.test))}  # fmt: skip
    mean, std = x["train"].mean(axis=0), x["train"].std(axis=0) + 1e-6
    features = {k: torch.from_numpy((v - mean) / std) for k, v in x.items()}
    regression = data.task_kind == "regression"
    labels = torch.tensor(data.train.labels, dtype=torch.float32 if regression else torch.int64)
    torch.manual_seed(0)
    head = nn.Linear(features["train"].shape[1], 1 if regression else data.num_labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for _ in range(STEPS):
        optimizer.zero_grad()
        task_loss(head(features["train"]), labels, data.task_kind).backward()
        optimizer.step()
    out = {}
    with torch.no_grad():
        for name, split in (("dev", data.dev), ("test", data.test)):
            logits = head(features[name]).numpy()
            _, metrics = score(logits, split, task_kind=data.task_kind, metric=data.metric)
            out[f"{name}_probe_score"] = metrics["score"]
    return out


def cached_probe_scores(
    data: PreparedData, *, backbone: str, device: str = "cpu", bert: nn.Module | None = None
) -> dict[str, float]:
    """:func:`probe_scores`, read from or written to the cache (one JSON file per key); the
    backbone's full weights are loaded (unless given as ``bert``) only when the cache misses."""
    return _probe(data, _Weights(backbone, bert), device)


def cached_zero_shot_scores(
    data: PreparedData, *, backbone: str, device: str = "cpu", bert: nn.Module | None = None
) -> dict[str, float]:
    """:func:`trainables.zero_shot.zero_shot_scores` of the frozen backbone's mean-pooled
    embeddings, cached like the probe (same key, its own file); ``{}`` for a task it does not
    apply to (:func:`trainables.zero_shot.applies`)."""
    return _zero_shot(data, _Weights(backbone, bert), device)


def with_probe(data: PreparedData, backbone: str, *, sizes: tuple[int, ...] = ()) -> PreparedData:
    """``data`` carrying its head-only probe scores and, where it applies, its zero-shot cosine
    scores (``reference``), computed on the real backbone (cached), on the GPU where there is one.
    ``sizes``: the training subsets trials draw (``train_samples``); each gets a probe trained on
    that many rows (seed 0's subset), so a 128-example trial is not held to a probe on 60,000.
    The backbone's weights are loaded once, at the first cache miss, for every baseline."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = _Weights(backbone)
    reference = {**_probe(data, weights, device), **_zero_shot(data, weights, device)}
    probes_at = {int(k): _probe(subsample(data, k, seed=0), weights, device)
                 for k in sorted(set(sizes)) if k < len(data.train)}  # fmt: skip
    return dataclasses.replace(data, reference=reference, probes_at=probes_at)


@dataclass
class _Weights:
    """The backbone's full weights, loaded at the first call (a driver holds a meta backbone:
    shapes and tokenizer only), then kept for the next cache miss."""

    backbone: str
    bert: nn.Module | None = None

    def __call__(self) -> nn.Module:
        if self.bert is None:
            self.bert = load_backbone(self.backbone).model
        return self.bert


def _probe(data: PreparedData, weights: _Weights, device: str) -> dict[str, float]:
    path = _cache_path(weights.backbone, data)
    return _cached(path, lambda b: probe_scores(b, data, device=device), weights)


def _zero_shot(data: PreparedData, weights: _Weights, device: str) -> dict[str, float]:
    if not applies(data):
        return {}
    path = _cache_path(weights.backbone, data).with_suffix(".zero_shot.json")
    return _cached(path, lambda b: zero_shot_scores(embedder(b, device=device), data), weights)


def _cached(
    path: Path, compute: Callable[[nn.Module], dict[str, float]], weights: _Weights
) -> dict[str, float]:
    if path.exists():
        return json.loads(path.read_text())
    scores = compute(weights())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(scores))
    tmp.replace(path)  # whole or absent: a killed driver leaves no half-written file
    return scores


def _cache_path(backbone: str, data: PreparedData) -> Path:
    digest = hashlib.sha256()
    for split in (data.train, data.dev, data.test):
        digest.update(_fingerprint(split))
    key = f"{data.task}|{backbone}|{digest.hexdigest()[:16]}"
    name = hashlib.sha256(key.encode()).hexdigest()[:24]
    return default_cache_dir() / "baselines" / f"{name}.json"


def _fingerprint(split: Encoded) -> bytes:
    return (
        np.ascontiguousarray(split.input_ids).tobytes()
        + np.ascontiguousarray(split.offsets).tobytes()
        + np.ascontiguousarray(split.labels).tobytes()
    )
