"""Inference and the helpers training shares with it: dev/test evaluation, prediction, latency,
the task loss, bf16 autocast and the attention backends.

``evaluate`` and ``predict`` sort a split by length (least padding, an out-of-memory shows on the
first batch) and put the results back in the split's order with one host sync for the whole split.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from search_spaces.errors import one_of
from trainables.data.encoded import Encoded
from trainables.metrics import compute, top_class_share
from trainables.training.batching import collate, eval_plan

TASK_KINDS = ("classification", "regression")
# cuDNN attention (first choice for bf16 on Hopper) builds a plan for every new shape, and dynamic
# padding makes up to max_length / 8 widths: measured 2.7x slower over a 150-step run on an H100.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
LATENCY_PASSES = 50  # timed forward passes of one example each: latency is their median
LATENCY_WARMUP = 5  # untimed calls first: allocator growth, kernel selection, compilation


def evaluate(
    model: nn.Module,
    data: Encoded,
    *,
    task_kind: str,
    metric: str,
    batch_size: int,
    device: torch.device | str | None = None,
    precision: str = "auto",
) -> tuple[float, dict[str, float]]:
    """Mean loss and ``metrics.compute(metric, ...)`` of ``model`` on ``data`` (any split)."""
    if task_kind not in TASK_KINDS:
        raise one_of("task_kind", task_kind, TASK_KINDS)
    logits = predict(model, data, batch_size=batch_size, device=device, precision=precision)
    return score(logits, data, task_kind=task_kind, metric=metric)


def score(
    logits: np.ndarray, data: Encoded, *, task_kind: str, metric: str
) -> tuple[float, dict[str, float]]:
    """Mean loss and ``metrics.compute(metric, ...)`` of ``logits`` against ``data``'s labels, with
    ``top_class_share`` for classification (did it learn? 1.0 is one class for everything)."""
    dtype = torch.float32 if task_kind == "regression" else torch.int64
    labels = torch.tensor(data.labels, dtype=dtype)  # a copy: cached splits are read-only
    loss = task_loss(torch.from_numpy(logits), labels, task_kind).item()
    scores = compute(metric, logits, data.labels)
    if task_kind != "regression":
        scores["top_class_share"] = top_class_share(logits)
    return loss, scores


def predict(
    model: nn.Module,
    data: Encoded,
    *,
    batch_size: int,
    device: torch.device | str | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """float32 logits [N, num_labels] in ``data``'s order. ``device`` defaults to the model's;
    the model's train/eval mode is left as it was."""
    if len(data) == 0:
        raise ValueError("cannot predict on an empty split")
    device = model_device(model) if device is None else torch.device(device)
    plan = eval_plan(data.lengths, batch_size=batch_size)
    outputs = []
    with inference(model, precision, device):
        for indices in plan:
            b = collate(data, indices, pin_memory=device.type == "cuda").to(device)
            outputs.append(model(b.input_ids, b.attention_mask, b.token_type_ids).float())
    logits = torch.cat(outputs).cpu().numpy()  # one host sync for the whole split
    ordered = np.empty_like(logits)
    ordered[np.concatenate(plan)] = logits
    return ordered


def measure_latency(
    model: nn.Module,
    data: Encoded,
    *,
    batch_size: int = 1,
    n: int = LATENCY_PASSES,
    device: torch.device | str | None = None,
    precision: str = "auto",
) -> float:
    """Median milliseconds of one forward pass over ``batch_size`` examples of ``data`` (taken in
    order, cycling), after :data:`LATENCY_WARMUP` untimed passes. Host-to-device copies are not
    timed."""
    if n < 1 or batch_size < 1 or len(data) == 0:
        raise ValueError(f"need n >= 1, batch_size >= 1 and data, got {n=}, {batch_size=}")
    device = model_device(model) if device is None else torch.device(device)
    starts = range(0, (n + LATENCY_WARMUP) * batch_size, batch_size)
    batches = [collate(data, np.arange(s, s + batch_size) % len(data)).to(device) for s in starts]
    times_ms = []
    with inference(model, precision, device):
        for b in batches:
            synchronize(device)
            start = time.perf_counter()
            model(b.input_ids, b.attention_mask, b.token_type_ids)
            synchronize(device)
            times_ms.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times_ms[LATENCY_WARMUP:])


def task_loss(logits: torch.Tensor, labels: torch.Tensor, task_kind: str) -> torch.Tensor:
    logits = logits.float()  # the loss in fp32 even under bf16 autocast
    if task_kind == "regression":
        return F.mse_loss(logits.squeeze(-1), labels)
    return F.cross_entropy(logits, labels)


@contextlib.contextmanager
def inference(model: nn.Module, precision: str, device: torch.device) -> Iterator[None]:
    """Eval mode, no autograd, the attention backends and autocast of training; restores the
    model's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), sdpa_kernel(SDPA_BACKENDS), autocast(precision, device):
            yield
    finally:
        model.train(was_training)


def autocast(
    precision: str, device: torch.device, *, cache: bool = True
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where asked; ``cache=False`` under CUDA graph capture, as torch requires."""
    if not uses_bf16(precision, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` means bf16 autocast on ``device`` (``auto``: on CUDA)."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = [
    "LATENCY_WARMUP", "SDPA_BACKENDS", "TASK_KINDS", "autocast", "evaluate", "inference",
    "measure_latency", "model_device", "predict", "score", "synchronize", "task_loss",
    "uses_bf16",
]  # fmt: skip
