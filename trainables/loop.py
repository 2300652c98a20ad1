"""The training loop: AdamW over the trainable parameters, linear warm-up and decay, periodic dev
evaluation, early stop through a callback, exact resume, out-of-memory reported as a status.

Read :func:`fit` top to bottom; docs/TRAINING.md gives the reason for each speed choice. The model
contract: ``model(input_ids, attention_mask, token_type_ids) -> logits [B, num_labels]``
(``num_labels == 1`` for regression) and, optionally, ``model.step_hook(step)`` (AdaLoRA's rank
reallocation), called after each optimizer step while the gradients still exist.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.attention import sdpa_kernel
from torch.optim.lr_scheduler import LambdaLR

from search_spaces.errors import ConfigError, one_of
from trainables.batching import Batch, epoch_batches
from trainables.data.encoded import Encoded
from trainables.graphs import StepGraphs, capturable_optimizer
from trainables.inference import (
    SDPA_BACKENDS,
    TASK_KINDS,
    autocast,
    evaluate,
    measure_latency,
    predict,
    synchronize,
    task_loss,
)
from trainables.metrics import Metric, get_metric
from trainables.train_config import TrainConfig

STATE_VERSION = 1
# Config fields that do not change what is trained, so a resumed run may change them.
RESUME_FREE_FIELDS = ("compile", "cuda_graphs", "eval_batch_size")
MIB = 2**20


@dataclass(frozen=True)
class EvalReport:
    """One dev evaluation. Counts and times are cumulative over resumes; ``evaluation`` is 1-based.

    ``state()`` returns the loop state to resume from right after this evaluation. It shares
    tensors with the live optimizer: call it (and save the result) inside ``on_eval``.
    """

    step: int
    epoch: float
    evaluation: int
    train_loss: float  # mean training loss since the previous evaluation
    dev_loss: float
    dev_metrics: dict[str, float]
    dev_score: float
    samples_seen: int
    wall_s: float
    train_samples_per_s: float
    tokens_seen: int  # real tokens trained on so far (for an MFU estimate)
    train_s: float  # training wall time so far, evaluations excluded
    graphed_steps: int  # steps of this fit call (since start or resume) run from a CUDA graph
    state: Callable[[], dict[str, Any]] = field(repr=False, compare=False)


@dataclass(frozen=True)
class FitResult:
    """How a run ended (``completed``, ``stopped`` by ``on_eval``, or ``oom``) and what it reached."""

    status: str
    steps: int
    evaluations: int
    best_dev_score: float | None  # None when no evaluation finished
    best_step: int
    time_to_best_s: float
    dev_metrics: dict[str, float]  # of the last evaluation
    train_samples_per_s: float  # samples / training wall time (evaluations excluded)
    wall_s: float
    peak_mem_mib: float | None  # CUDA only
    samples_seen: int
    tokens_seen: int  # real tokens processed (for an MFU estimate)
    padded_tokens_seen: int
    cuda_graphs: int = 0  # batch shapes whose training step ran from a CUDA graph
    graphs_off: str | None = None  # why graphs were turned off (a step that waits for the host)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Progress:
    """Where the run stands; with the optimizer, scheduler and RNG states it is the loop state."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # within ``epoch``
    evaluation: int = 0
    best_score: float | None = None
    best_step: int = 0
    time_to_best_s: float = 0.0
    samples_seen: int = 0
    tokens_seen: int = 0
    padded_tokens_seen: int = 0
    train_s: float = 0.0
    wall_s: float = 0.0
    peak_mem_mib: float | None = None
    dev_metrics: dict[str, float] = field(default_factory=dict)

    def done(self, plan: FitPlan) -> bool:
        return self.step >= plan.total_steps

    def advance(self, batch: Batch) -> None:
        self.step += 1
        self.batch_index += 1
        self.samples_seen += batch.size
        self.tokens_seen += batch.num_tokens
        self.padded_tokens_seen += batch.padded_tokens


@dataclass(frozen=True)
class FitPlan:
    """What is fixed before the first step: the recipe, the task and the step arithmetic."""

    config: TrainConfig
    task_kind: str
    metric: Metric
    device: torch.device
    total_steps: int
    eval_steps: frozenset[int]
    steps_per_epoch: int

    @classmethod
    def of(
        cls, config: TrainConfig, num_train: int, *, task_kind: str, metric: str, device: Any
    ) -> FitPlan:
        spec = get_metric(metric)
        if task_kind not in TASK_KINDS:
            raise one_of("task_kind", task_kind, TASK_KINDS)
        if spec.regression != (task_kind == "regression"):
            raise ConfigError(f"metric={metric!r} does not fit task_kind={task_kind!r}")
        total = config.total_steps(num_train)
        return cls(
            config, task_kind, spec, _resolve_device(device), total,
            frozenset(config.eval_steps(total)), config.steps_per_epoch(num_train),
        )  # fmt: skip

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def improves(self, best: float | None, score: float) -> bool:
        """Whether ``score`` beats ``best`` (None: nothing yet) in the metric's direction."""
        return best is None or (score > best if self.metric.mode == "max" else score < best)


def fit(
    model: nn.Module,
    train: Encoded,
    dev: Encoded,
    config: TrainConfig,
    *,
    task_kind: str,
    metric: str,
    on_eval: Callable[[EvalReport], bool | None] | None = None,
    state: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> FitResult:
    """Train ``model`` in place (moved to ``device``), evaluating on ``dev`` ``config.evals`` times.

    ``on_eval`` returning True stops the run (status ``stopped``, unless that was the last step).
    ``state`` (from :attr:`EvalReport.state`, with the model weights restored by the caller)
    continues a run exactly: same remaining batches, evaluation numbering and, on CPU, weights.
    """
    plan = FitPlan.of(config, len(train), task_kind=task_kind, metric=metric, device=device)
    if plan.cuda:
        torch.set_float32_matmul_precision("high")  # fp32 matmuls on tensor cores (TF32)
        torch.cuda.reset_peak_memory_stats(plan.device)
    model.to(plan.device)
    params = [p for p in model.parameters() if p.requires_grad]
    graphed = graphable(model, config, plan)
    optimizer = _optimizer(params, config, cuda=plan.cuda, graphs=graphed)
    warmup = config.warmup_steps(plan.total_steps)
    scheduler = LambdaLR(optimizer, lr_factor(warmup, plan.total_steps))
    if state is None:
        torch.manual_seed(config.seed)  # dropout masks
        progress = _Progress()
    else:
        progress = _restore(state, optimizer, scheduler, plan)
    forward = torch.compile(model) if config.compile else model
    step_hook = getattr(model, "step_hook", None)
    # AdaLoRA's orthogonality penalty, dynamic fusion's identity pull: part of the training loss,
    # not of the reported task loss.
    regularization = getattr(model, "regularization_loss", None)
    plateau_hook = getattr(model, "plateau_hook", None)

    def body(batch: Batch) -> torch.Tensor:
        """Forward, backward, clipping, optimizer step on a device batch; the task loss."""
        with autocast(config.precision, plan.device, cache=not graphed):
            logits = forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        loss = task_loss(logits, batch.labels, task_kind)
        extra = regularization() if regularization is not None else None
        (loss if extra is None else loss + extra).backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, config.grad_clip, foreach=True)
        optimizer.step()
        return loss.detach()

    graphs = None
    if graphed:
        graphs = StepGraphs(
            body, optimizer, params, batch_size=config.batch_size, device=plan.device
        )

    def snapshot(at_step: int) -> dict[str, Any]:
        if progress.step != at_step:
            raise RuntimeError(f"state() of step {at_step} called at step {progress.step}")
        return {
            "version": STATE_VERSION,
            "config": config.to_dict(),
            "progress": asdict(progress),
            "optimizer": _portable(optimizer.state_dict()),
            "scheduler": _portable(scheduler.state_dict()),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(plan.device) if plan.cuda else None,
        }

    status = "completed"
    wall_start = time.perf_counter() - progress.wall_s
    segment_start = time.perf_counter()  # training time excludes evaluations and on_eval
    loss_sum, window = torch.zeros((), device=plan.device), 0  # on device: no per-step sync
    model.train()
    with sdpa_kernel(SDPA_BACKENDS):
        try:
            while not progress.done(plan) and status == "completed":
                for batch in _remaining_batches(train, plan, progress):
                    if graphs is not None:
                        loss = graphs.step(batch)
                        scheduler.step()
                    else:
                        loss = body(batch.to(plan.device))
                        scheduler.step()
                        if step_hook is not None:
                            step_hook(progress.step)  # 0-based index of the step just taken
                        optimizer.zero_grad(set_to_none=True)
                    loss_sum += loss
                    window += 1
                    progress.advance(batch)
                    if progress.step in plan.eval_steps:
                        synchronize(plan.device)  # charge queued kernels to training time
                        progress.train_s += time.perf_counter() - segment_start
                        train_loss = (loss_sum / window).item()
                        loss_sum.zero_()
                        window = 0
                        wall_s = time.perf_counter() - wall_start
                        # eager model: dev batches have other shapes, each a costly compilation
                        replays = 0 if graphs is None else graphs.replays
                        report = _evaluate(
                            model, dev, plan, progress, train_loss, wall_s, snapshot, replays
                        )
                        if plateau_hook is not None:
                            # lora_grow: grow the rank when the dev loss stalls, before on_eval
                            # checkpoints it. Its tensors are allocated at full rank from the
                            # start, so the optimiser already holds every parameter it can grow.
                            plateau_hook(report.dev_loss)
                        model.train()
                        if on_eval is not None and on_eval(report) and not progress.done(plan):
                            status = "stopped"
                        segment_start = time.perf_counter()
                    if progress.done(plan) or status != "completed":
                        break
                else:
                    progress.epoch += 1
                    progress.batch_index = 0
        except torch.OutOfMemoryError:
            status = "oom"
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    progress.wall_s = time.perf_counter() - wall_start
    _record_peak_memory(progress, plan.device)
    return _result(status, progress, graphs)


def _remaining_batches(train: Encoded, plan: FitPlan, progress: _Progress) -> list[Batch]:
    config = plan.config
    return epoch_batches(
        train, batch_size=config.batch_size, seed=config.seed, epoch=progress.epoch,
        length_grouping=config.length_grouping, start=progress.batch_index, pin_memory=plan.cuda,
    )  # fmt: skip


def _evaluate(
    model: nn.Module,
    dev: Encoded,
    plan: FitPlan,
    progress: _Progress,
    train_loss: float,
    wall_s: float,
    snapshot: Callable[[int], dict[str, Any]],
    graphed_steps: int = 0,
) -> EvalReport:
    """Evaluate on ``dev``, record the evaluation and best score in ``progress``, build the report."""
    config = plan.config
    dev_loss, metrics = evaluate(
        model, dev, task_kind=plan.task_kind, metric=plan.metric.name,
        batch_size=config.eval_batch_size, device=plan.device, precision=config.precision,
    )  # fmt: skip
    score, step = metrics["score"], progress.step
    progress.evaluation += 1
    progress.dev_metrics = metrics
    progress.wall_s = wall_s
    _record_peak_memory(progress, plan.device)
    if plan.improves(progress.best_score, score):
        progress.best_score, progress.best_step, progress.time_to_best_s = score, step, wall_s
    return EvalReport(
        step=step,
        epoch=step / plan.steps_per_epoch,
        evaluation=progress.evaluation,
        train_loss=train_loss,
        dev_loss=dev_loss,
        dev_metrics=metrics,
        dev_score=score,
        samples_seen=progress.samples_seen,
        wall_s=wall_s,
        train_samples_per_s=_per_s(progress.samples_seen, progress.train_s),
        tokens_seen=progress.tokens_seen,
        train_s=progress.train_s,
        graphed_steps=graphed_steps,
        state=lambda: snapshot(step),
    )


def graphable(model: nn.Module, config: TrainConfig, plan: FitPlan) -> bool:
    """Whether training steps run from CUDA graphs: on CUDA, asked for, not compiled (compile
    brings its own), and the model has no per-step Python hooks (``model.graph_safe``)."""
    return (
        plan.cuda and config.cuda_graphs and not config.compile
        and bool(getattr(model, "graph_safe", True))
    )  # fmt: skip


def _optimizer(
    trainable: list[nn.Parameter], config: TrainConfig, *, cuda: bool, graphs: bool = False
) -> torch.optim.AdamW:
    """AdamW over ``trainable``; biases and LayerNorm weights (the 1-d ones, as in nanoGPT) get no
    weight decay. ``graphs``: the capturable form a CUDA graph can step."""
    if not trainable:
        raise ConfigError("the model has no trainable parameters")
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if graphs:
        return capturable_optimizer(groups, config.lr, trainable[0].device)
    # fused: one kernel for the whole update on CUDA; foreach: batched ops on CPU (fused and
    # foreach are mutually exclusive)
    return torch.optim.AdamW(
        groups, lr=config.lr, fused=cuda or None, foreach=None if cuda else True
    )


def lr_factor(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to 1 over ``warmup`` steps, then linear decay; no step runs at lr 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _restore(
    state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: LambdaLR, plan: FitPlan
) -> _Progress:
    """Load a :func:`fit` loop state into the optimizer, scheduler and RNGs; return its progress."""
    if state.get("version") != STATE_VERSION:
        raise ConfigError(f"loop state version={state.get('version')!r} is not {STATE_VERSION}")
    saved, current = state["config"], plan.config.to_dict()
    changed = sorted(
        k for k in current if k not in RESUME_FREE_FIELDS and saved.get(k) != current[k]
    )
    if changed:
        k = changed[0]
        raise ConfigError(
            f"cannot resume: {k}={current[k]!r} but the state has {k}={saved.get(k)!r}"
        )
    progress = _Progress(**state["progress"])
    if progress.step > plan.total_steps:
        raise ConfigError(
            f"cannot resume: the state is at step {progress.step} of {plan.total_steps}"
        )
    lrs = [group["lr"] for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        if isinstance(lr, torch.Tensor):  # a graph reads this tensor: keep it, with the saved value
            lr.fill_(float(group["lr"]))
            group["lr"] = lr
    torch.set_rng_state(state["torch_rng"].cpu())
    if plan.cuda and state["cuda_rng"] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), plan.device)
    return progress


def _result(status: str, progress: _Progress, graphs: StepGraphs | None) -> FitResult:
    return FitResult(
        status=status,
        steps=progress.step,
        evaluations=progress.evaluation,
        best_dev_score=progress.best_score,
        best_step=progress.best_step,
        time_to_best_s=progress.time_to_best_s,
        dev_metrics=progress.dev_metrics,
        train_samples_per_s=_per_s(progress.samples_seen, progress.train_s),
        wall_s=progress.wall_s,
        peak_mem_mib=progress.peak_mem_mib,
        samples_seen=progress.samples_seen,
        tokens_seen=progress.tokens_seen,
        padded_tokens_seen=progress.padded_tokens_seen,
        cuda_graphs=0 if graphs is None else graphs.captured,
        graphs_off=None if graphs is None else graphs.off_reason,
    )


def _portable(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer or scheduler state dict with tensor learning rates (graphed runs) as floats, so
    a state resumes under either form and on any device."""

    def plain(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim == 0:
            return float(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    out = dict(state)
    if "param_groups" in out:
        out["param_groups"] = [
            {k: plain(v) if k in ("lr", "initial_lr") else v for k, v in g.items()}
            for g in out["param_groups"]
        ]
    for key in ("base_lrs", "_last_lr"):
        if key in out:
            out[key] = plain(out[key])
    return out


def _per_s(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def _record_peak_memory(progress: _Progress, device: torch.device) -> None:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / MIB
        progress.peak_mem_mib = max(peak, progress.peak_mem_mib or 0.0)


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# evaluate, predict and measure_latency live in trainables.inference; importable from here too
__all__ = ["EvalReport", "FitResult", "evaluate", "fit", "measure_latency", "predict"]
