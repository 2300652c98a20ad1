"""A pool group's evaluation (:mod:`trainables.fused.pool`): the reports of its trials that are
due, their rows scored together, each report as :func:`trainables.recipe.run_trial` makes one."""

from __future__ import annotations

import time
from typing import Any

from trainables.fused.pool_group import PoolGroup
from trainables.fused.pool_trial import PoolTrial, method_weights
from trainables.fused.step import evaluate_fused, final_scores
from trainables.prepared import PreparedData
from trainables.relay import WEIGHTS_KEY
from trainables.train_config import TrainConfig
from trainables.training.report import Scores


def evaluate_due(
    group: PoolGroup, due: list[PoolTrial], data: PreparedData, *, slots: int, device: str
) -> list[tuple[PoolTrial, dict[str, Any]]]:
    """Each due trial's evaluation report: the rows scored on dev in one fused pass, and so the test
    split and extra sets of those at their last evaluation (as dev, up to float rounding from the
    trial alone); at a trial's last, its final metrics and trained weights, status ``completed``.
    The caller marks such a trial done when it hands the report over, under the lock its trials'
    polls take: a trial marked done before its last report was queued had a poll return without
    that report and drop the trial (seen in a CPU test), and the trial's next poll fail."""
    train = due[0].train
    results = evaluate_fused(
        group.model, data.dev, task_kind=data.task_kind, metric=data.metric,
        batch_size=eval_batch(train, len(due), slots), device=device, precision=train.precision,
        rows=[m.row for m in due],
    )  # fmt: skip
    last = [m for m in due if m.reporter.is_last(m.progress.evaluation + 1)]  # all at once
    finals = final_scores(group.model, data, [m.row for m in last], train, device,
                          batch_size=eval_batch(train, len(last), slots))  # fmt: skip
    scores = {m.token: s for m, s in zip(last, finals, strict=True)}
    losses = group.loss_sums.tolist()
    out = []
    for member, (dev_loss, metrics) in zip(due, results, strict=True):
        train_loss = losses[member.row] / max(1, member.loss_steps)
        group.loss_sums[member.row] = 0.0
        report = _report(group, member, (train_loss, dev_loss), metrics, scores.get(member.token),
                         data, slots=slots, device=device)  # fmt: skip
        out.append((member, report))
    return out


def eval_batch(train: TrainConfig, rows: int, slots: int) -> int:
    """Examples per fused evaluation forward of ``rows`` of a group of ``slots``: as many sequences
    as a full group's forward (``eval_batch_size`` examples for each of ``slots`` rows), so that a
    few rows due take fewer forwards, each of them host work under ``vmap``, in no more memory."""
    return train.eval_batch_size * max(1, slots // max(1, rows))


def _report(
    group: PoolGroup,
    m: PoolTrial,
    losses: tuple[float, float],
    metrics: dict[str, float],
    scores: Scores | None,
    data: PreparedData,
    *,
    slots: int,
    device: str,
) -> dict[str, Any]:
    """The evaluation's report; at the trial's last, with its final metrics and trained weights
    (its row written back; the rest of its final metrics, latency, on its own model)."""
    assert m.reporter is not None
    progress = m.progress
    progress.wall_s = time.perf_counter() - m.started
    progress.record(metrics, m.plan, progress.wall_s)
    m.loss_steps = 0
    ev = progress.report(m.plan, train_loss=losses[0], dev_loss=losses[1])
    report = m.reporter.evaluation(
        ev, tokens_seen=progress.tokens_seen, fused_slots=slots,
        cuda_graphs=group.stepper.captured,
        cuda_graph_capture_s=round(group.stepper.capture_s, 3),  # the group's, so far
    )  # fmt: skip
    if not m.reporter.last(ev):
        return report
    group.model.store_row(m.row, m.model)
    m.model.to(device)
    m.reporter.finish(report, data, scores)
    m.model.to("cpu")
    report[WEIGHTS_KEY] = method_weights(m.model)
    return report


__all__ = ["eval_batch", "evaluate_due"]
