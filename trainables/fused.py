"""Fused LoRA trials: K LoRA trials of one backbone trained as one model, in one process.

Why: a graphed step of the embedded MiniLM at batch 32 costs ~2.5 ms of GPU time, most of it the
latency of ~700 kernels each too small to fill the GPU, so K trials run as K processes share the
GPU badly (8 under MPS: 3.15x one, docs/BENCHMARKS.md). Fused, the frozen backbone runs once
over the K trials' batches stacked (its matmuls K times taller, its kernel count unchanged);
only the LoRA factors and the heads belong to one trial, and they run as batched matmuls. This
is HFTA's horizontal fusion (Wang et al., MLSys 2021) made exact by LoRA's frozen backbone.

Each trial gets the gradients and the updates it would get alone:

* the loss is the sum of the trials' mean losses, and their parameters are disjoint;
* gradient clipping, AdamW (decoupled weight decay, bias correction), the learning rate and its
  schedule act per trial (:class:`RowAdamW` updates one ``[K, P]`` parameter row by row);
* a trial with a smaller rank than another at one linear is zero-padded there: the padded rows
  and columns of its factors get zero gradients and stay zero;
* each trial keeps its own data order (its seed); a training step packs each trial's sentences
  into rows of 64 tokens, attention kept within each sentence (:mod:`trainables.packed`; under
  transformers 5, which takes no 3-d mask, it pads every row to the longest of the K batches
  instead): the same result up to float rounding. Where one trial's batch is its epoch's short
  last one, the slots it leaves carry an ignored label.

What differs from K separate runs: float rounding and dropout draws (one generator for all),
and on GPUs (bf16 precision) the activations' precision: the fused model stores its frozen
backbone in bf16 and runs it without autocast, so the residual stream, layer norms and
element-wise kernels run in bf16 where a trial alone keeps them in fp32 around bf16 matmuls.
Those kernels are most of the step's memory traffic; the trials' rows (``theta``), heads,
losses and optimizer stay fp32.

What fuses: plain LoRA (``method="lora"``, mean-pooling head) trials of one backbone and task,
with the same adapted linears (ranks and alpha may differ) and the same :data:`SHARED_FIELDS` of
the training config; ``lr``, ``weight_decay``, ``grad_clip`` and ``seed`` may differ. A fused
run trains every trial to the end (no early stop per trial) and does not checkpoint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.nn.attention import sdpa_kernel

from search_spaces.errors import ConfigError
from trainables import packed
from trainables.batching import Batch, collate, epoch_plan
from trainables.data.encoded import Encoded
from trainables.graphs import StepGraphs
from trainables.inference import (
    SDPA_BACKENDS,
    autocast,
    predict,
    score,
    synchronize,
    uses_bf16,
)
from trainables.loop import MIB, FitPlan, FitResult, graphable, lr_factor
from trainables.model import MASK_3D, PeftClassifier, encoder_mask, masked_mean
from trainables.train_config import TrainConfig

FUSABLE_METHODS = ("lora",)
# Training-config fields every fused trial must share: they fix the step arithmetic, the batch
# shapes and the precision of the one model all trials run in.
SHARED_FIELDS = (
    "batch_size", "epochs", "max_steps", "warmup_ratio", "evals", "eval_batch_size", "max_length",
    "precision", "length_grouping", "compile", "cuda_graphs",
)  # fmt: skip
IGNORE_INDEX = -100  # a dummy row's class label (cross-entropy skips it); regression uses NaN
ADAM_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which the loop uses
ADAM_EPS = 1e-8
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s


class _FusedLoRALinear(nn.Module):
    """A frozen linear plus K LoRA updates, one per trial, on the K trials' rows (trial-major)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        # this forward's factors, set by FusedLoRA.forward from its theta: A [K, in, r] and
        # B [K, r, out], B already scaled by each trial's alpha / rank
        self.factors: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factors is None:
            raise RuntimeError("a fused LoRA linear runs inside FusedLoRA.forward only")
        a, b = self.factors
        k = len(a)
        out = self.base(x)
        rows = x.reshape(k, -1, x.shape[-1])  # [K, B*T, in]
        return torch.baddbmm(out.view(k, -1, out.shape[-1]), torch.bmm(rows, a), b).view_as(out)


@dataclass(frozen=True)
class _Slot:
    """Where one tensor of a trial lives in a row of ``theta``, and its shape there."""

    size: int
    shape: tuple[int, ...]
    decay: bool  # AdamW weight decay applies (the loop decays 2-d tensors, not biases)


class FusedLoRA(nn.Module):
    """K LoRA trials (``members``, built by ``build_model``) as one model over one frozen backbone.

    ``forward(input_ids [K*B, T], ...)`` -> logits ``[K, B, num_labels]``: rows ``k*B..(k+1)*B``
    are trial ``k``'s. Every trainable number of trial ``k`` is in row ``k`` of the one parameter
    ``theta [K, P]``; :meth:`write_back` copies the trained rows into the members, whose own
    evaluation, merging and saving then work as for a trial trained alone.
    """

    decay_mask: torch.Tensor
    scale: torch.Tensor

    def __init__(self, members: Sequence[PeftClassifier]) -> None:
        super().__init__()
        check_members(members)
        self.members = list(members)  # a plain list: not registered as submodules
        self.trials = k = len(members)
        first = members[0]
        self.num_labels = first.config.num_labels
        self.bert = copy.deepcopy(_bert_of(first))
        self.dropout = copy.deepcopy(first.dropout)  # the head's, as the members have it
        names = _lora_names(first)
        slots: list[_Slot] = []
        self._lora: list[_FusedLoRALinear] = []
        for name in names:
            layers = [_bert_of(m).get_submodule(name) for m in members]
            base = self.bert.get_submodule(name).base_layer
            rank = max(_rank(layer) for layer in layers)
            fused = _FusedLoRALinear(base)
            parent, _, child = name.rpartition(".")
            setattr(self.bert.get_submodule(parent), child, fused)
            self._lora.append(fused)
            slots += [_Slot(base.in_features * rank, (base.in_features, rank), True),
                      _Slot(rank * base.out_features, (rank, base.out_features), True)]  # fmt: skip
        hidden = first.shape.hidden
        slots += [_Slot(hidden * self.num_labels, (hidden, self.num_labels), True),
                  _Slot(self.num_labels, (1, self.num_labels), False)]  # fmt: skip
        for p in self.bert.parameters():
            p.requires_grad_(False)
        self._slots = slots
        device = next(self.bert.parameters()).device
        self.theta = nn.Parameter(torch.zeros(k, sum(s.size for s in slots), device=device))
        self.register_buffer("decay_mask", torch.cat([
            torch.full((s.size,), float(s.decay), device=device) for s in slots]))  # fmt: skip
        self._names = names
        # [K, the LoRA part of P]: each trial's alpha / rank over its B factors, 1 over its A's
        self.register_buffer("scale", torch.stack([self._scale_row(m) for m in members]).to(device))
        with torch.no_grad():
            for part, value in self._pairs():
                part.copy_(value)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        *,
        slots: int | None = None,
        rows: list[int] | None = None,
    ) -> torch.Tensor:
        """Logits ``[K, B, num_labels]``; with ``slots``, of a packed batch (:mod:`.packed`,
        ``attention_mask`` its segments): ``B = slots``, in its labels' order. ``rows``: of
        those trials only (``K = len(rows)``; the batch holds theirs alone)."""
        theta = self.theta if rows is None else self.theta[rows]
        scale = self.scale if rows is None else self.scale[rows]
        k = len(theta)
        lora = theta[:, : scale.shape[1]] * scale  # one kernel, not one a linear
        if not torch.is_autocast_enabled(input_ids.device.type):
            lora = lora.to(self.backbone_dtype)  # a bf16 backbone runs without autocast
        sizes = [s.size for s in self._slots]
        chunks = [*lora.split(sizes[:-2], dim=1),
                  *theta[:, lora.shape[1]:].split(sizes[-2:], dim=1)]  # fmt: skip
        views = [c.view(k, *s.shape) for c, s in zip(chunks, self._slots, strict=True)]
        for i, module in enumerate(self._lora):
            module.factors = (views[2 * i], views[2 * i + 1])
        if slots is None:
            out = self.bert(input_ids=input_ids, attention_mask=encoder_mask(attention_mask),
                            token_type_ids=token_type_ids)  # fmt: skip
            pooled = masked_mean(out.last_hidden_state, attention_mask).float()
        else:
            out = self.bert(input_ids=input_ids, attention_mask=packed.block_mask(attention_mask),
                            token_type_ids=token_type_ids,
                            position_ids=packed.positions(attention_mask))  # fmt: skip
            pooled = packed.segment_mean(out.last_hidden_state, attention_mask,
                                         trials=k, slots=slots)  # fmt: skip
        pooled = self.dropout(pooled).view(k, -1, pooled.shape[-1])
        return torch.baddbmm(views[-1], pooled, views[-2])

    def backbone_to(self, dtype: torch.dtype) -> None:
        """Store the whole frozen backbone in ``dtype`` (embeddings and layer norms too), to run
        it without autocast: activations in ``dtype`` end to end."""
        self.bert.to(dtype)

    @property
    def backbone_dtype(self) -> torch.dtype:
        return self.bert.embeddings.word_embeddings.weight.dtype

    def write_back(self) -> None:
        """Copy each trial's trained row into its member (LoRA factors and head)."""
        with torch.no_grad():
            for part, value in self._pairs():
                value.copy_(part)

    def load_row(self, row: int, member: PeftClassifier) -> None:
        """Make row ``row`` another trial's: ``member``'s LoRA factors, head and LoRA scales
        (its slots zero where its rank is smaller, and at every linear it has no LoRA on: both
        factors zero get zero gradients and stay zero). ``member`` must fit
        (``check_members(..., subset=True)``), of a rank no larger than the rows'."""
        with torch.no_grad():
            self.theta[row].zero_()
            for part, value in self._pairs(row, member):
                part.copy_(value)
            self.scale[row] = self._scale_row(member)

    def store_row(self, row: int, member: PeftClassifier) -> None:
        """Copy row ``row``'s trained weights into ``member`` (the trial that row holds)."""
        with torch.no_grad():
            for part, value in self._pairs(row, member):
                value.copy_(part)

    def _scale_row(self, member: PeftClassifier) -> torch.Tensor:
        """``member``'s row of :attr:`scale`: 1 over each A slot, its alpha / rank over each B."""
        parts = []
        present = set(_lora_names(member))
        for i, name in enumerate(self._names):
            a, b = self._slots[2 * i], self._slots[2 * i + 1]
            layer = _bert_of(member).get_submodule(name) if name in present else None
            scaling = 0.0 if layer is None else float(layer.scaling["default"])
            parts += [torch.ones(a.size), torch.full((b.size,), scaling)]
        return torch.cat(parts)

    def _pairs(
        self, row: int | None = None, member: PeftClassifier | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(part of ``theta``, the member's tensor it holds) for every tensor of every trial
        (or of ``member`` at ``row``), both views: a smaller rank fills the corner of its
        zero-padded slot."""
        pairs = enumerate(self.members) if member is None else [(row, member)]
        for r, m in pairs:
            present = set(_lora_names(m))
            names = [n for n in self._names if n in present]
            views = self._views(cast(int, r))
            # the views of its linears (two each, in module order), then the head's two
            mine = [v for i, n in enumerate(self._names) if n in present
                    for v in views[2 * i : 2 * i + 2]] + views[-2:]  # fmt: skip
            for view, value in zip(mine, _member_tensors(m, names), strict=True):
                yield view[tuple(slice(0, n) for n in value.shape)], value

    def _views(self, row: int) -> list[torch.Tensor]:
        """Row ``row`` of ``theta`` cut into its slots, each in the slot's shape (views)."""
        chunks = self.theta.detach()[row].split([s.size for s in self._slots])
        return [c.view(s.shape) for c, s in zip(chunks, self._slots, strict=True)]


class RowAdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW``'s update on one ``[K, P]`` parameter whose rows are K trials, with a
    learning rate (``lr [K]``, a device tensor the caller fills each step) and a weight decay
    (``decay [K, P]``) per row. Capturable in a CUDA graph: no host reads, state on the device."""

    def __init__(self, param: nn.Parameter, *, lr: torch.Tensor, decay: torch.Tensor) -> None:
        super().__init__([param], {})
        self.lr = lr
        self.decay = decay

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        p, state = self._state()
        beta1, beta2 = ADAM_BETAS
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        step += 1
        lr, count = self.lr[:, None], step[:, None]
        grad = cast(torch.Tensor, p.grad)
        p.mul_(1 - lr * self.decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**count).sqrt()).add_(ADAM_EPS)
        p.sub_(exp_avg / denom * (lr / (1 - beta1**count)))

    @torch.no_grad()
    def reset_row(self, row: int) -> None:
        """Row ``row`` starts over, as a new trial's first step: its moments and step count 0."""
        _, state = self._state()
        for value in state.values():
            value[row] = 0

    def _state(self) -> tuple[nn.Parameter, dict[str, torch.Tensor]]:
        """The parameter and its state, created on first use: a step count per row (each row's
        bias correction), the two moments."""
        (p,) = self.param_groups[0]["params"]
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros(len(p), device=p.device)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        return p, state


def clip_rows_(grad: torch.Tensor, max_norm: torch.Tensor) -> None:
    """``clip_grad_norm_`` per row of ``grad [K, P]``: row k scaled to norm ``max_norm[k]`` at most
    (``max_norm[k] == 0``: not clipped)."""
    norms = grad.pow(2).sum(dim=1).sqrt()
    coef = (max_norm / (norms + CLIP_EPS)).clamp(max=1.0)
    grad.mul_(torch.where(max_norm > 0, coef, torch.ones_like(coef))[:, None])


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
    (:func:`trainables.packed.pack`, ``batch_size`` label slots a trial). Each comes with
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


def evaluate_fused(
    model: FusedLoRA,
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
                     precision=_autocast_precision(model, precision))  # fmt: skip
    return [score(logits[:, k], data, task_kind=task_kind, metric=metric) for k in range(every.k)]


class _EveryTrial(nn.Module):
    """``model`` on one batch for all its trials (or ``rows``): ``[B, T]`` in,
    ``[B, K, num_labels]`` out."""

    def __init__(self, model: FusedLoRA, rows: list[int] | None = None) -> None:
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


@dataclass
class _Trial:
    """One fused trial's progress."""

    samples: int = 0
    tokens: int = 0
    padded: int = 0
    best: float | None = None
    best_step: int = 0
    time_to_best_s: float = 0.0
    dev_metrics: dict[str, float] | None = None


class FusedStep:
    """One training step of a fused model's K rows, graphed where it can (one CUDA graph per
    batch shape): the sum of the trials' mean losses backward, clipping and AdamW per row.

    Each row's learning rate (:attr:`lr`, which the caller fills before every step: a row at
    0 does not move), weight decay and clipping are set by :meth:`set_row`; a row set again
    starts over (its AdamW state zeroed), as a new trial's. ``pack``: batches are packed rows
    (:mod:`.packed`), which take a 3-d attention mask (transformers 4).
    """

    def __init__(
        self, model: FusedLoRA, first: TrainConfig, plan: FitPlan, *, task_kind: str
    ) -> None:
        k, device = model.trials, plan.device
        self.model = model
        self.lr = torch.zeros(k, device=device)
        self.pack = MASK_3D
        self._max_norm = torch.zeros(k, device=device)
        self._decay = torch.zeros_like(model.theta)
        self._optimizer = RowAdamW(model.theta, lr=self.lr, decay=self._decay)
        self._precision = _autocast_precision(model, first.precision)
        self._slots = first.batch_size if self.pack else None
        self._task_kind = task_kind
        self._graphed = graphable(model, first, plan)
        self._device = device
        self._graphs = None
        if self._graphed:
            self._graphs = StepGraphs(
                self._body, self._optimizer, [model.theta], device=device,
                batch_size=None if self.pack else k * first.batch_size,
            )  # fmt: skip

    def set_row(self, row: int, config: TrainConfig) -> None:
        """Row ``row`` trains with ``config``'s learning rate, weight decay and clipping, from a
        fresh AdamW state."""
        with torch.no_grad():
            self.lr[row] = config.lr
            self._decay[row] = config.weight_decay * self.model.decay_mask
            self._max_norm[row] = config.grad_clip
        self._optimizer.reset_row(row)

    def __call__(self, batch: Batch) -> torch.Tensor:
        """One step on ``batch`` (host tensors); each trial's loss ``[K]`` on the device, valid
        until the next step."""
        if self._graphs is not None:
            return self._graphs.step(batch)
        losses = self._body(batch.to(self._device))
        self._optimizer.zero_grad(set_to_none=True)
        return losses

    @property
    def graphs_captured(self) -> int:
        return 0 if self._graphs is None else self._graphs.captured

    @property
    def graphs_off(self) -> str | None:
        return None if self._graphs is None else self._graphs.off_reason

    def _body(self, batch: Batch) -> torch.Tensor:
        with autocast(self._precision, self._device, cache=not self._graphed):
            logits = self.model(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                                slots=self._slots)  # fmt: skip
        losses = fused_losses(logits, batch.labels, self._task_kind)
        losses.sum().backward()
        theta = self.model.theta
        clip_rows_(cast(torch.Tensor, theta.grad), self._max_norm)
        self._optimizer.step()
        return losses.detach()


def fit_fused(
    model: FusedLoRA,
    train: Encoded,
    dev: Encoded,
    configs: Sequence[TrainConfig],
    *,
    task_kind: str,
    metric: str,
    on_eval: Callable[[int, list[tuple[float, dict[str, float]]]], None] | None = None,
    device: torch.device | str | None = None,
) -> list[FitResult]:
    """Train ``model``'s K trials (``configs[k]`` is trial k's) to the end, evaluating all on
    ``dev`` ``evals`` times; write the trained weights back into the members. One
    :class:`FitResult` per trial; ``on_eval(step, [(dev_loss, dev_metrics)] * K)`` sees each
    evaluation. ``train_samples_per_s`` is each trial's own (the run's aggregate / K)."""
    check_configs(configs, model.trials)
    first = configs[0]
    plan = FitPlan.of(first, len(train), task_kind=task_kind, metric=metric, device=device)
    if plan.cuda:
        torch.set_float32_matmul_precision("high")
        torch.cuda.reset_peak_memory_stats(plan.device)
    model.to(plan.device)
    if uses_bf16(first.precision, plan.device):
        model.backbone_to(torch.bfloat16)
    stepper = FusedStep(model, first, plan, task_kind=task_kind)
    for row, config in enumerate(configs):
        stepper.set_row(row, config)
    base_lr = stepper.lr.clone()
    factor = lr_factor(first.warmup_steps(plan.total_steps), plan.total_steps)
    torch.manual_seed(first.seed)  # dropout masks: one generator for the fused model
    trials = [_Trial() for _ in configs]
    step = epoch = 0
    train_s = 0.0
    wall_start = segment = time.perf_counter()
    model.train()
    with sdpa_kernel(SDPA_BACKENDS):
        while step < plan.total_steps:
            for batch, counts in fused_batches(train, configs, epoch=epoch, pack=stepper.pack,
                                               pin_memory=plan.cuda):  # fmt: skip
                torch.mul(base_lr, factor(step), out=stepper.lr)
                stepper(batch)
                step += 1
                for trial, (samples, tokens, padded) in zip(trials, counts, strict=True):
                    trial.samples += samples
                    trial.tokens += tokens
                    trial.padded += padded
                if step in plan.eval_steps:
                    synchronize(plan.device)
                    train_s += time.perf_counter() - segment
                    results = evaluate_fused(
                        model, dev, task_kind=task_kind, metric=metric,
                        batch_size=first.eval_batch_size, device=plan.device,
                        precision=first.precision,
                    )  # fmt: skip
                    wall_s = time.perf_counter() - wall_start
                    for trial, (_, metrics) in zip(trials, results, strict=True):
                        _record(trial, metrics, plan, step, wall_s)
                    if on_eval is not None:
                        on_eval(step, results)
                    model.train()
                    segment = time.perf_counter()
                if step >= plan.total_steps:
                    break
            epoch += 1
    wall_s = time.perf_counter() - wall_start
    model.write_back()
    peak = torch.cuda.max_memory_allocated(plan.device) / MIB if plan.cuda else None
    return [
        FitResult(
            status="completed",
            steps=step,
            evaluations=len(plan.eval_steps),
            best_dev_score=t.best,
            best_step=t.best_step,
            time_to_best_s=t.time_to_best_s,
            dev_metrics=t.dev_metrics or {},
            train_samples_per_s=t.samples / train_s if train_s else 0.0,
            wall_s=wall_s,
            peak_mem_mib=peak,
            samples_seen=t.samples,
            tokens_seen=t.tokens,
            padded_tokens_seen=t.padded,
            cuda_graphs=stepper.graphs_captured,
            graphs_off=stepper.graphs_off,
        )  # fmt: skip
        for t in trials
    ]


def _record(
    trial: _Trial, metrics: dict[str, float], plan: FitPlan, step: int, wall_s: float
) -> None:
    score = metrics["score"]
    trial.dev_metrics = metrics
    if plan.improves(trial.best, score):
        trial.best, trial.best_step, trial.time_to_best_s = score, step, wall_s


def _autocast_precision(model: FusedLoRA, precision: str) -> str:
    """``precision`` for the autocast around ``model``: none ("fp32") once its backbone is bf16,
    which then runs in bf16 end to end."""
    return precision if model.backbone_dtype == torch.float32 else "fp32"


def check_members(members: Sequence[PeftClassifier], *, subset: bool = False) -> None:
    """Refuse members that cannot fuse with the first, naming why; ``subset``: a member may
    have LoRA on fewer linears than the first (a fused pool's rows cover a union)."""
    if not members:
        raise ConfigError("fusing needs at least one trial")
    first = members[0]
    names = _lora_names(first)
    for k, member in enumerate(members):
        config = member.config
        if config.method not in FUSABLE_METHODS or config.head != "mean":
            raise ConfigError(
                f"trial {k}: method={config.method!r} head={config.head!r} cannot be fused; "
                f"fusable: method in {list(FUSABLE_METHODS)} with head='mean'"
            )
        if config.num_labels != first.config.num_labels or member.shape != first.shape:
            raise ConfigError(f"trial {k}: another task or backbone than trial 0's")
        linears = _lora_names(member)
        if (not set(linears) <= set(names)) if subset else linears != names:
            raise ConfigError(
                f"trial {k}: LoRA on other linears than trial 0's (placement, layers)"
            )
        extra = [n for n, p in member.named_parameters()
                 if p.requires_grad and "lora_" not in n and not n.startswith("classifier.")]  # fmt: skip
        if extra:
            raise ConfigError(f"trial {k}: trains {extra[0]}, which fusing does not carry")
        ours, theirs = (_bert_of(m).embeddings.word_embeddings.weight
                        for m in (first, member))  # fmt: skip
        if not torch.equal(ours, theirs):
            raise ConfigError(f"trial {k}: its backbone weights differ from trial 0's")


def check_configs(
    configs: Sequence[TrainConfig],
    trials: int | None = None,
    *,
    shared: Sequence[str] = SHARED_FIELDS,
) -> None:
    """Refuse training configs that cannot fuse (``trials``: how many the model holds), naming the
    first of the ``shared`` fields that differs; before any model is built, where the caller can."""
    if trials is not None and len(configs) != trials:
        raise ConfigError(f"{len(configs)} training configs for {trials} fused trials")
    if configs[0].compile:
        raise ConfigError("compile=True cannot be fused (fused steps replay CUDA graphs instead)")
    first = configs[0].to_dict()
    for k, config in enumerate(configs[1:], start=1):
        for name in shared:
            if config.to_dict()[name] != first[name]:
                raise ConfigError(
                    f"trial {k}: {name}={config.to_dict()[name]!r} but trial 0 has "
                    f"{name}={first[name]!r}; fused trials share {', '.join(shared)}"
                )


def _lora_names(member: PeftClassifier) -> list[str]:
    """Module names (in the BertModel) of the linears LoRA adapts, in module order."""
    return [n for n, m in _bert_of(member).named_modules() if isinstance(m, LoraLayer)]


def _bert_of(member: PeftClassifier) -> Any:
    """The member's BertModel, its LoRA layers in place (peft's base model)."""
    return cast(Any, member.encoder).get_base_model()


def _rank(layer: Any) -> int:
    return int(layer.lora_A["default"].weight.shape[0])


def _member_tensors(member: PeftClassifier, names: list[str]) -> list[torch.Tensor]:
    """The member's trainable tensors in slot layout (views that share its storage): per LoRA
    linear A^T [in, r] and B^T [r, out], then the head's W^T [hidden, C] and bias [1, C]."""
    bert = _bert_of(member)
    out: list[torch.Tensor] = []
    for name in names:
        layer = bert.get_submodule(name)
        out += [
            layer.lora_A["default"].weight.detach().T,
            layer.lora_B["default"].weight.detach().T,
        ]
    head = member.classifier
    return [*out, head.weight.detach().T, head.bias.detach()[None, :]]


def pinned(batch: Batch) -> Batch:
    types = batch.token_type_ids
    return Batch(batch.input_ids.pin_memory(), batch.attention_mask.pin_memory(),
                 None if types is None else types.pin_memory(), batch.labels.pin_memory(),
                 batch.num_tokens)  # fmt: skip


__all__ = [
    "FUSABLE_METHODS",
    "FusedLoRA",
    "RowAdamW",
    "check_configs",
    "evaluate_fused",
    "FusedStep",
    "fit_fused",
    "fused_batches",
    "padded_step",
    "step_batch",
]
