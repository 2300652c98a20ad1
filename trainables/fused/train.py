"""K fused LoRA trials trained to the end in one process (:func:`fit_fused`): the training core's
plan, step and tally (:mod:`trainables.training`), one row per trial."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.nn.attention import sdpa_kernel

from search_spaces.errors import ConfigError
from trainables.data.encoded import Encoded
from trainables.fused.batches import Counts, fused_batches
from trainables.fused.model import FusedLoRA
from trainables.fused.rows import FusedRows
from trainables.fused.step import FusedStep, evaluate_fused
from trainables.inference import SDPA_BACKENDS, uses_bf16
from trainables.train_config import TrainConfig
from trainables.training.batching import Batch
from trainables.training.plan import FitPlan
from trainables.training.progress import FitResult, Progress, TrainClock, scheduled

# Training-config fields every fused trial must share: they fix the step arithmetic, the batch
# shapes and the precision of the one model all trials run in.
SHARED_FIELDS = (
    "batch_size", "epochs", "max_steps", "warmup_ratio", "evals", "eval_batch_size", "max_length",
    "precision", "length_grouping", "compile", "cuda_graphs",
)  # fmt: skip
OnFusedEval = Callable[[int, list[tuple[float, dict[str, float]]]], None]


def fit_fused(
    model: FusedLoRA | FusedRows,
    train: Encoded,
    dev: Encoded,
    configs: Sequence[TrainConfig],
    *,
    task_kind: str,
    metric: str,
    on_eval: OnFusedEval | None = None,
    device: torch.device | str | None = None,
) -> list[FitResult]:
    """Train ``model``'s K trials (``configs[k]`` is trial k's) to the end, evaluating all on
    ``dev`` ``evals`` times; write the trained weights back into the members. One
    :class:`FitResult` per trial; ``on_eval(step, [(dev_loss, dev_metrics)] * K)`` sees each
    evaluation. ``train_samples_per_s`` is each trial's own (the run's aggregate / K)."""
    plan, stepper = prepare_fused(model, len(train), configs, task_kind=task_kind,
                                  metric=metric, device=device)  # fmt: skip
    torch.manual_seed(configs[0].seed)  # dropout masks: one generator for the fused model
    run, trials = _train(model, stepper, plan, train, dev, configs, on_eval)
    model.write_back()
    run.record_peak_memory(plan.device)
    for trial in trials:  # the run's times and memory are every trial's
        trial.train_s, trial.wall_s, trial.peak_mem_mib = run.train_s, run.wall_s, run.peak_mem_mib
    return [trial.result("completed", stepper) for trial in trials]


def prepare_fused(
    model: FusedLoRA | FusedRows,
    train_rows: int,
    configs: Sequence[TrainConfig],
    *,
    task_kind: str,
    metric: str,
    device: torch.device | str | None = None,
    fresh_peak: bool = True,
) -> tuple[FitPlan, FusedStep]:
    """The plan of ``configs`` over ``train_rows`` and a step whose row k trains with
    ``configs[k]``, the model moved to the plan's device (its backbone in bf16 where the
    precision asks): what a fused run trains with, from its first step. ``fresh_peak``: the
    device's peak memory counted from here (:meth:`FitPlan.start_device`)."""
    check_configs(configs, model.trials)
    first = configs[0]
    plan = FitPlan.of(first, train_rows, task_kind=task_kind, metric=metric, device=device)
    plan.start_device(fresh_peak=fresh_peak)
    model.to(plan.device)
    if uses_bf16(first.precision, plan.device):
        model.backbone_to(torch.bfloat16)
    stepper = FusedStep(model, first, plan, task_kind=task_kind)
    for row, config in enumerate(configs):
        stepper.set_row(row, config)
    return plan, stepper


def _train(
    model: FusedLoRA | FusedRows,
    stepper: FusedStep,
    plan: FitPlan,
    train: Encoded,
    dev: Encoded,
    configs: Sequence[TrainConfig],
    on_eval: OnFusedEval | None,
) -> tuple[Progress, list[Progress]]:
    """Step every row to the end of the plan, evaluating them together at the plan's steps; the
    run's progress (its step, epoch and times) and each trial's (its counts and best)."""
    base_lr = stepper.lr.clone()
    factor = plan.schedule()
    run, trials = Progress(), [Progress() for _ in configs]

    def batches(epoch: int, start: int) -> Iterator[tuple[Batch, Counts]]:
        return fused_batches(train, configs, epoch=epoch, pack=stepper.pack, pin_memory=plan.cuda)

    clock = TrainClock(plan.device)
    model.train()
    with sdpa_kernel(SDPA_BACKENDS):
        for batch, counts in scheduled(plan, run, batches):
            torch.mul(base_lr, factor(run.step), out=stepper.lr)
            stepper(batch)
            run.advance(batch.size, batch.num_tokens, batch.padded_tokens)
            for trial, (samples, tokens, padded) in zip(trials, counts, strict=True):
                trial.advance(samples, tokens, padded)
            if run.step not in plan.eval_steps:
                continue
            start, end = clock.lap()
            run.train_s += end - start
            results = evaluate_fused(
                model, dev, task_kind=plan.task_kind, metric=plan.metric.name,
                batch_size=plan.config.eval_batch_size, device=plan.device,
                precision=plan.config.precision,
            )  # fmt: skip
            wall_s = clock.wall_s()
            for trial, (_, metrics) in zip(trials, results, strict=True):
                trial.record(metrics, plan, wall_s)
            if on_eval is not None:
                on_eval(run.step, results)
            model.train()
            clock.restart()
    run.wall_s = clock.wall_s()
    return run, trials


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


__all__ = ["SHARED_FIELDS", "check_configs", "fit_fused", "prepare_fused"]
