"""The head-only baseline: what the frozen backbone scores through a trained linear head alone.

A linear probe on the backbone's mean-pooled last hidden states (the trials' own head input, the
same tokenised splits), trained full-batch on standardised features. A PEFT trial at or below it
added nothing the head could not learn alone (the study rules: a bug until shown otherwise).
Computed once per (backbone, task, rows, length) on the driver and cached as JSON in the token
cache folder (``baselines/``); every trial then records it (``dev_probe_score``, ``test_probe_score``).
:func:`with_probe` attaches the zero-shot cosine of sentence-pair regression too
(:mod:`trainables.zero_shot`), computed and cached the same way (its own file beside the probe's).
The same fit (:func:`fit_probe`) is the head a trial starts from under ``head_init="probe"``
(LP-FT): :func:`cached_probe_head`, fitted on the trial's own training rows, cached as ``.npz``.
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

from search_spaces.errors import ConfigError
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


@dataclass(frozen=True)
class LinearHead:
    """A linear head on the raw pooled features: ``logits = features @ weight.T + bias``
    (``weight [C, d]``, ``bias [C]``, float32; C = 1 for regression)."""

    weight: np.ndarray
    bias: np.ndarray

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias

    def copy_to(self, linear: nn.Linear) -> None:
        """Make ``linear`` (a model's classifier, ``Linear(d, C)``) this head."""
        if tuple(linear.weight.shape) != self.weight.shape:
            raise ConfigError(f"a probe head of shape {self.weight.shape} cannot initialise a "
                              f"classifier of shape {tuple(linear.weight.shape)}")  # fmt: skip
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(self.weight))
            linear.bias.copy_(torch.from_numpy(self.bias))


def fit_probe(
    features: np.ndarray, labels: np.ndarray, *, task_kind: str, num_labels: int
) -> LinearHead:
    """The linear probe of ``features [N, d]`` (float32): full-batch AdamW (:data:`STEPS`,
    :data:`LR`, :data:`WEIGHT_DECAY`) on the standardised features from a seeded start, then the
    standardisation folded into the head (``W / std``, ``b - W @ (mean / std)``), so it applies to
    raw features as a model's classifier does. Leaves the global random generator as it was."""
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    x = torch.from_numpy((features - mean) / std)
    regression = task_kind == "regression"
    y = torch.tensor(labels, dtype=torch.float32 if regression else torch.int64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = nn.Linear(x.shape[1], 1 if regression else num_labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for _ in range(STEPS):
        optimizer.zero_grad()
        task_loss(head(x), y, task_kind).backward()
        optimizer.step()
    weight = head.weight.detach().double().numpy() / std
    bias = head.bias.detach().double().numpy() - weight @ mean
    return LinearHead(weight.astype(np.float32), bias.astype(np.float32))


def probe_scores(bert: nn.Module, data: PreparedData, *, device: str = "cpu") -> dict[str, float]:
    """``dev_probe_score`` and ``test_probe_score`` of a linear head on the frozen ``bert``."""
    embed = embedder(bert, device=device)
    head = fit_probe(embed(data.train), data.train.labels, task_kind=data.task_kind,
                     num_labels=data.num_labels)  # fmt: skip
    out = {}
    for name, split in (("dev", data.dev), ("test", data.test)):
        logits = head.logits(embed(split))
        _, metrics = score(logits, split, task_kind=data.task_kind, metric=data.metric)
        out[f"{name}_probe_score"] = metrics["score"]
    return out


def cached_probe_scores(
    data: PreparedData, *, backbone: str, device: str = "cpu", bert: nn.Module | None = None
) -> dict[str, float]:
    """:func:`probe_scores`, read from or written to the cache (one JSON file per key); the
    backbone's full weights are loaded (unless given as ``bert``) only when the cache misses."""
    return _probe(data, _Weights(backbone, bert), device)


def cached_probe_head(
    data: PreparedData, *, backbone: str, device: str = "cpu", bert: nn.Module | None = None
) -> LinearHead:
    """:func:`fit_probe` on the frozen backbone's pooled features of ``data.train`` (all of it:
    pass the trial's own rows), read from or written to the cache (one ``.npz`` per training
    split, backbone and task), so that a study's trials on the same rows fit it once per host.
    On a miss, ``bert`` (else the backbone's full weights, loaded) embeds the rows in eval mode
    and is left on the device it was on."""
    path = _cache_path(backbone, data, splits=(data.train,)).with_suffix(".head.npz")
    if path.exists():
        with np.load(path) as stored:
            return LinearHead(stored["weight"], stored["bias"])
    bert = _Weights(backbone, bert)()
    home = next(bert.parameters()).device
    features = embedder(bert, device=device)(data.train)
    bert.to(home)
    head = fit_probe(features, data.train.labels, task_kind=data.task_kind,
                     num_labels=data.num_labels)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, weight=head.weight, bias=head.bias)
    tmp.replace(path)  # whole or absent, as the scores' JSON
    return head


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


def _cache_path(
    backbone: str, data: PreparedData, *, splits: tuple[Encoded, ...] | None = None
) -> Path:
    """The cache file (``.json``) of ``data``'s baselines: keyed by task, backbone and the
    fingerprints of ``splits`` (default: train, dev and test)."""
    digest = hashlib.sha256()
    for split in (data.train, data.dev, data.test) if splits is None else splits:
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
