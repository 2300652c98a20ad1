"""Task similarity from the data: cosine of the mean sentence embeddings of two tasks.

The embedding of a task is the mean, over a seeded sample of its honest training split, of the
frozen backbone's masked mean-pooled last hidden states (the ``head="mean"`` pooling). Used by the
hybrid's ``fusion_init="similarity"`` (the study resolves it into ``source_similarity`` before the
trials, so each trial stays a pure function of its config).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from trainables.backbones import load_backbone
from trainables.data.loading import load_frames, resolve_task
from trainables.data.splits import few_shot, task_splits
from trainables.data.tokenize import default_cache_dir, encode
from trainables.model import masked_mean
from trainables.training.batching import collate, eval_plan

SAMPLES = 128  # examples per task: enough to rank a handful of sources (CPU: ~3 s on MiniLM)
MAX_LENGTH = 64
BATCH_SIZE = 64


def task_embedding(
    task_name: str,
    backbone: str,
    *,
    samples: int = SAMPLES,
    max_length: int = MAX_LENGTH,
    data_dir: str | Path | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The mean of the mean-pooled embeddings of ``samples`` training examples of the task,
    cached beside the token cache (``embeddings/``) under everything that shapes it."""
    key = f"{task_name}|{backbone}|{samples}|{max_length}|{seed}|{data_dir or ''}"
    cache = (
        default_cache_dir() / "embeddings" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"
    )
    if cache.is_file():
        return np.load(cache)
    embedding = _embed(task_name, backbone, samples, max_length, data_dir, seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, embedding)
    tmp.replace(cache)
    return embedding


def _embed(
    task_name: str,
    backbone: str,
    samples: int,
    max_length: int,
    data_dir: str | Path | None,
    seed: int,
) -> np.ndarray:
    task = resolve_task(task_name)
    train = task_splits(task, load_frames(task, data_dir=data_dir), seed=seed).train
    if samples < len(train):
        train = few_shot(train, samples, seed=seed)
    loaded = load_backbone(backbone)
    data = encode(
        train, tokenizer=loaded.tokenizer, text_columns=task.text_columns, max_length=max_length
    )
    model = loaded.model.eval()
    total = torch.zeros(loaded.shape.hidden, dtype=torch.float64)
    with torch.inference_mode():
        for indices in eval_plan(data.lengths, batch_size=BATCH_SIZE):
            batch = collate(data, indices)
            hidden = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                token_type_ids=batch.token_type_ids,
            ).last_hidden_state
            total += masked_mean(hidden, batch.attention_mask).sum(0).double()
    return (total / len(data)).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / denominator if denominator else 0.0


@lru_cache(maxsize=16)
def source_similarity(
    target: str,
    sources: tuple[str, ...],
    backbone: str,
    *,
    data_dir: str | None = None,
    samples: int = SAMPLES,
) -> tuple[float, ...]:
    """Cosine similarity of each source's embedding to the target's, rounded to 4 decimals (it
    travels as a trial param)."""
    reference = task_embedding(target, backbone, samples=samples, data_dir=data_dir)
    return tuple(
        round(cosine(reference, task_embedding(s, backbone, samples=samples, data_dir=data_dir)), 4)
        for s in sources
    )


__all__ = ["SAMPLES", "cosine", "source_similarity", "task_embedding"]
