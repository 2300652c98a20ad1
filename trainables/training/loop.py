"""The training loop: AdamW over the trainable parameters, linear warm-up and decay, periodic dev
evaluation, early stop through a callback, exact resume, out-of-memory reported as a status.

Read :func:`fit` top to bottom; docs/TRAINING.md gives the reason for each speed choice. The model
contract: ``model(input_ids, attention_mask, token_type_ids) -> logits [B, num_labels]``
(``num_labels == 1`` for regression) and, optionally, ``model.step_hook(step)`` (AdaLoRA's rank
reallocation), called after each optimizer step while the gradients still exist.

The parts are the training core's, which the fused model and its pool share: the plan of
evaluations and the best-score rule (:mod:`.plan`), the step, graphed or eager (:mod:`.steps`),
the tally and reports (:mod:`.progress`) and the loop state (:mod:`.state`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.attention import sdpa_kernel
from torch.optim.lr_scheduler import LambdaLR

from trainables.data.encoded import Encoded
from trainables.inference import SDPA_BACKENDS, evaluate
from trainables.model import PeftClassifier
from trainables.train_config import TrainConfig
from trainables.training.batching import MIN_WIDTH_BATCHES, Batch, epoch_batches
from trainables.training.plan import FitPlan, graphable
from trainables.training.progress import (
    EvalReport,
    FitResult,
    Progress,
    TrainClock,
    scheduled,
)
from trainables.training.state import restore, snapshot
from trainables.training.steps import TrainStep, adamw, model_body

OnEval = Callable[[EvalReport], bool | None]


def fit(
    model: nn.Module,
    train: Encoded,
    dev: Encoded,
    config: TrainConfig,
    *,
    task_kind: str,
    metric: str,
    on_eval: OnEval | None = None,
    state: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> FitResult:
    """Train ``model`` in place (moved to ``device``), evaluating on ``dev`` ``config.evals`` times.

    ``on_eval`` returning True stops the run (status ``stopped``, unless that was the last step).
    ``state`` (from :attr:`EvalReport.state`, with the model weights restored by the caller)
    continues a run exactly: same remaining batches, evaluation numbering and, on CPU, weights.
    """
    plan = FitPlan.of(config, len(train), task_kind=task_kind, metric=metric, device=device)
    plan.start_device()
    model.to(plan.device)
    run = _Run(model, plan, state)
    status = run.train(train, dev, on_eval)
    run.progress.wall_s = run.clock.wall_s()
    run.progress.record_peak_memory(plan.device)
    return run.progress.result(status, run.step)


class _Run:
    """One :func:`fit` call: its optimizer, schedule, step and progress."""

    def __init__(self, model: nn.Module, plan: FitPlan, state: dict[str, Any] | None) -> None:
        config = plan.config
        self.model, self.plan = model, plan
        params = [p for p in model.parameters() if p.requires_grad]
        graphed = graphable(model, config, plan)
        head = model.classifier.parameters() if isinstance(model, PeftClassifier) else ()
        self.optimizer = adamw(params, config, cuda=plan.cuda, graphs=graphed, head=list(head))
        self.scheduler = LambdaLR(self.optimizer, plan.schedule())
        if state is None:
            torch.manual_seed(config.seed)  # dropout masks
            self.progress = Progress()
        else:
            self.progress = restore(state, self.optimizer, self.scheduler, plan)
        forward = torch.compile(model) if config.compile else model
        body = model_body(model, forward, self.optimizer, params, config,
                          task_kind=plan.task_kind, device=plan.device, graphed=graphed)  # fmt: skip
        self.step = TrainStep(body, self.optimizer, params, graphed=graphed,
                              batch_sizes=(config.batch_size,), device=plan.device,
                              hook=getattr(model, "step_hook", None))  # fmt: skip
        self.plateau_hook = getattr(model, "plateau_hook", None)
        # training time excludes evaluations and on_eval; a resumed run's wall clock continues
        self.clock = TrainClock(plan.device, wall_s=self.progress.wall_s)

    def train(self, train: Encoded, dev: Encoded, on_eval: OnEval | None) -> str:
        """Step to the end of the plan or a stop; the status."""
        plan, progress = self.plan, self.progress
        loss_sum, window = torch.zeros((), device=plan.device), 0  # on device: no per-step sync
        self.model.train()
        with sdpa_kernel(SDPA_BACKENDS):
            try:
                for batch in scheduled(plan, progress, self._batches(train)):
                    loss_sum += self.step(batch, progress.step)
                    self.scheduler.step()
                    window += 1
                    progress.advance(batch.size, batch.num_tokens, batch.padded_tokens)
                    if progress.step not in plan.eval_steps:
                        continue
                    start, end = self.clock.lap()
                    progress.train_s += end - start
                    train_loss = (loss_sum / window).item()
                    loss_sum.zero_()
                    window = 0
                    if self._evaluate(dev, train_loss, on_eval) and not progress.done(plan):
                        return "stopped"
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                return "oom"
        return "completed"

    def _batches(self, train: Encoded) -> Callable[[int, int], list[Batch]]:
        config = self.plan.config

        def batches(epoch: int, start: int) -> list[Batch]:
            return epoch_batches(
                train, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
                length_grouping=config.length_grouping, start=start, pin_memory=self.plan.cuda,
                min_width_batches=MIN_WIDTH_BATCHES if self.step.graphed else 0,
            )  # fmt: skip

        return batches

    def _evaluate(self, dev: Encoded, train_loss: float, on_eval: OnEval | None) -> bool:
        """Evaluate on ``dev``, record it, call the hooks; whether ``on_eval`` asks to stop."""
        plan, progress, config = self.plan, self.progress, self.plan.config
        wall_s = self.clock.wall_s()
        dev_loss, metrics = evaluate(
            self.model, dev, task_kind=plan.task_kind, metric=plan.metric.name,
            batch_size=config.eval_batch_size, device=plan.device, precision=config.precision,
        )  # fmt: skip
        progress.wall_s = wall_s
        progress.record_peak_memory(plan.device)
        progress.record(metrics, plan, wall_s)
        step = progress.step
        # eager model: dev batches have other shapes, each a costly compilation
        report = progress.report(plan, train_loss=train_loss, dev_loss=dev_loss,
                                 graphed_steps=self.step.replays,
                                 capture_s=self.step.capture_s,
                                 state=lambda: self._state(step))  # fmt: skip
        if self.plateau_hook is not None:
            # lora_grow: grow the rank when the dev loss stalls, before on_eval checkpoints it.
            # Its tensors are allocated at full rank from the start, so the optimiser already
            # holds every parameter it can grow.
            self.plateau_hook(report.dev_loss)
        self.model.train()
        stop = on_eval is not None and bool(on_eval(report))
        self.clock.restart()
        return stop

    def _state(self, at_step: int) -> dict[str, Any]:
        if self.progress.step != at_step:
            raise RuntimeError(f"state() of step {at_step} called at step {self.progress.step}")
        return snapshot(self.progress, self.plan, self.optimizer, self.scheduler)


__all__ = ["EvalReport", "FitResult", "fit"]
