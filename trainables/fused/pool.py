"""A pool of fused rows that a study's trials join and leave: Tune's concurrent trials on one GPU
trained as fused models (:mod:`trainables.fused`), one fused group per row signature.

Why: a trial of the embedded backbone is bound by kernel latency, so eight trials run as eight
processes on one GPU share it badly (2.9x one trial through Ray Tune's fractional GPUs,
docs/BENCHMARKS.md), where eight fused trials run 6-7x. A study runs each configuration as its
own Tune trial (its own searcher suggestion, ASHA decision, MLflow run); with a pool, such a
trial's process does not train: it hands its configuration to the pool (one Ray actor that holds
the GPU, :func:`trainables.relay.tune_pooled_trial`) and relays the pool's evaluation reports
to Tune. The pool trains every trial it holds as one row of its group's fused model, one fused
step at a time, each trial at its own step of its own schedule, data order and training subset.

Groups (:mod:`.pool_group`): trials of one row signature (:mod:`search_spaces.row_groups`) share
``slots`` rows of one fused model (plain LoRA: ``FusedLoRA``; bitfit, houlsby, pfeiffer, prefix,
fusion, lora_fusion: ``FusedRows``), made as its first trial joins; the groups step in turn.
UniPELT, AdaLoRA, rank growth and the rest are refused at join, naming why.

Each trial gets what it would get trained alone by :func:`trainables.training.loop.fit` (up to float
rounding and dropout draws, as for fused trials): its rows are disjoint from the others', and a
row that takes a new trial starts over (weights, AdamW moments and step count, learning rate,
weight decay, clipping). An idle row gets no data and a zero learning rate.

A trial leaves when it completes, or when its Tune process ends (stopped by the scheduler, or
failed: ``tune_pooled_trial`` leaves in a ``finally``); one that has not polled for
:data:`LEASE_S` seconds (its process killed) is dropped at the next step. An empty pool waits up
to :data:`GATHER_S` seconds for ``slots`` trials (fewer where the study said fewer are still to
come: :meth:`FusedPool.expect`) before its first step, so that the trials Tune starts together
train in step. A fused evaluation runs the rows that are due, together (in a full group's
sequences a forward: :func:`~.pool_eval.eval_batch`), and so do the test split and extra sets of
those at their last (as dev, up to float rounding from the trial alone); the
rest of a trial's final metrics (latency) runs on its own model, its row written back. Pool trials
checkpoint their weights once, at the end: a trial restarted by Tune starts over. Each trial
plans, tallies and reports with the training core (:mod:`trainables.training`: its own
:class:`~trainables.training.plan.FitPlan`, ``Progress`` and ``TrialReporter``), the fused rows
step by :class:`~trainables.fused.step.FusedStep`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.nn.attention import sdpa_kernel

from search_spaces.errors import ConfigError
from search_spaces.row_groups import RowLimits, row_signature
from trainables.fused.batches import pinned, step_batch
from trainables.fused.pool_eval import evaluate_due
from trainables.fused.pool_group import PoolGroup, build_group, check_fits
from trainables.fused.pool_trial import Build, PoolTrial, build_member, start_head
from trainables.fused.train import check_configs
from trainables.inference import SDPA_BACKENDS
from trainables.model import PeftClassifier
from trainables.prepared import PreparedData, train_rows
from trainables.recipe import split_config
from trainables.relay import WEIGHTS_KEY
from trainables.train_config import TrainConfig
from trainables.training.plan import FitPlan
from trainables.training.progress import TrainClock
from trainables.training.report import TrialReporter

# What a pool's trials share: the fused step's shapes and precision (each has its own schedule)
POOL_SHARED_FIELDS = ("batch_size", "eval_batch_size", "max_length", "precision", "compile",
                      "cuda_graphs")  # fmt: skip
GATHER_S = 5.0  # an empty pool waits this long for more trials to fill its rows
LEASE_S = 30.0  # a trial that has not polled for this long is gone (Tune stopped it, or it died)
IDLE = np.zeros(0, dtype=np.int64)  # an idle row's part of a step: no rows of data


class FusedPool:
    """Fused groups of ``slots`` rows each on ``device``, trained by a background thread for
    whichever trials have joined. Thread-safe: Ray runs it as a threaded actor.

    A trial trains in its row signature's group. The first trial fixes what all share (the
    fields of :data:`POOL_SHARED_FIELDS`); ``limits`` are the largest sizes a trial of each
    method may have (:class:`search_spaces.row_groups.RowLimits`; for a method without, ``rank``
    and ``placement`` set them).
    """

    def __init__(
        self,
        data: PreparedData,
        *,
        slots: int,
        rank: int = 16,
        placement: str | None = None,
        limits: Mapping[str, RowLimits] | None = None,
        device: str | None = None,
        lease_s: float = LEASE_S,
        gather_s: float = GATHER_S,
        build: Build = build_member,
    ) -> None:
        self._limits = dict(limits or {})
        self._default_limits = RowLimits(rank=rank, placement=placement)
        lowest = min(x.rank for x in (self._default_limits, *self._limits.values()))
        if slots < 1 or lowest < 1:
            raise ConfigError(f"a fused pool needs slots >= 1 and rank >= 1, not {slots}, "
                              f"{lowest}")  # fmt: skip
        self.data = data
        self.slots = slots
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.lease_s = lease_s
        self.gather_s = gather_s
        self._expected: int | None = None  # trials the phase sends (``expect``); None: unknown
        self._joined = 0  # trials joined since ``expect``
        self._build = build
        self._lock = threading.Condition()
        self._pending: list[PoolTrial] = []
        self._members: dict[int, PoolTrial] = {}  # by token: admitted or pending, until polled out
        self._tokens = 0
        # per row signature, built as its first trial joins, from its config at the pool's
        # limits: the model every row of its group starts as, and its training config
        self._templates: dict[tuple[Any, ...], tuple[PeftClassifier, TrainConfig]] = {}
        self._groups: dict[tuple[Any, ...], PoolGroup] = {}  # built by the training thread
        # held while a trial's model is built and while a step runs: a build (seeded, on the
        # host generator) and a step's dropout draws never interleave
        self._rng = threading.Lock()
        self._error: BaseException | None = None
        self._closed = False
        self.steps = 0  # fused steps run (one per group stepped)
        self._thread = threading.Thread(target=self._run, name="fused-pool", daemon=True)
        self._thread.start()

    # --- what trials call ------------------------------------------------------------------------

    def join(self, config: dict[str, Any]) -> int:
        """Queue a trial (its flat config, as :func:`trainables.recipe.run_trial` takes it);
        returns its token. Refuses, with the reason, a trial that cannot fuse with the pool's."""
        method, train = split_config(config, num_labels=self.data.num_labels)
        signature = row_signature(method)  # refuses a method rows cannot hold
        limits = self._limits.get(method.method, self._default_limits)
        limits.refuse(method)
        backbone = str(config.get("backbone", "minilm-l6"))
        sources = self.data.adapters_for(method.bottleneck) if method.sources else None
        with self._rng:
            model = self._build(method, train, backbone, sources=sources)
            start_head(model, train, self.data, train_samples=config.get("train_samples"),
                       backbone=backbone, device=self.device)  # fmt: skip
            if signature not in self._templates:
                template = self._build(limits.template(method), train, backbone,
                                       sources=sources)  # fmt: skip
                self._templates[signature] = (template, train)
        rows = train_rows(self.data, config.get("train_samples"), seed=train.seed)
        with self._lock:
            self._raise_error()
            first = next(iter(self._templates.values()))[1]
            check_configs([first, train], shared=POOL_SHARED_FIELDS)
            check_fits(self._templates[signature][0], model)
            plan = FitPlan.of(train, len(rows), task_kind=self.data.task_kind,
                              metric=self.data.metric, device=self.device)  # fmt: skip
            self._tokens += 1
            member = PoolTrial(self._tokens, config, train, model, plan, plan.schedule(), rows,
                               signature=signature)  # fmt: skip
            self._members[member.token] = member
            self._pending.append(member)
            self._joined += 1
            self._lock.notify_all()
        return member.token

    def poll(self, token: int, wait_s: float = 1.0) -> list[dict[str, Any]]:
        """The trial's evaluation reports since its last poll (waiting up to ``wait_s`` for one);
        the last has ``status="completed"``. Polling keeps the trial in the pool."""
        deadline = time.monotonic() + wait_s
        with self._lock:
            while True:
                self._raise_error()
                member = self._members.get(token)
                if member is None:
                    raise ConfigError(f"trial {token} is not in the fused pool (dropped after "
                                      f"{self.lease_s:g} s without a poll)")  # fmt: skip
                member.polled = float("inf")  # waiting here: alive
                left = deadline - time.monotonic()
                if member.reports or left <= 0:
                    member.polled = time.monotonic()
                    reports, member.reports = member.reports, []
                    if member.done:
                        del self._members[token]
                    return reports
                self._lock.wait(left)

    def expect(self, trials: int) -> None:
        """The study's next phase sends this pool ``trials`` trials: an empty pool starts once
        ``slots`` wait or every one of them not yet trained has joined, rather than waiting out
        ``gather_s`` for ``slots`` (a phase, or its last wave, smaller than the pool)."""
        if trials < 1:
            raise ConfigError(f"a phase sends a pool at least one trial, not {trials}")
        with self._lock:
            self._expected, self._joined = trials, len(self._pending)  # waiting: the phase's
            self._lock.notify_all()

    def leave(self, token: int) -> None:
        """The trial is gone: free its row at the next step."""
        with self._lock:
            member = self._members.pop(token, None)
            if member is not None:
                member.polled = float("-inf")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join()

    def status(self) -> dict[str, Any]:
        """Trials training and waiting, fused steps run, groups (signatures met) and rows built."""
        with self._lock:
            training = sum(m is not None for g in self._groups.values() for m in g.rows)
            return {"training": training, "waiting": len(self._pending), "steps": self.steps,
                    "slots": self.slots, "groups": len(self._templates),
                    "rows": self.slots * len(self._groups),
                    "group_methods": sorted(g.label for g in self._groups.values())}  # fmt: skip

    # --- the training thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with sdpa_kernel(SDPA_BACKENDS):
                self._train()
        except BaseException as error:  # noqa: BLE001 - handed to every trial that polls
            with self._lock:
                self._error = error
                self._lock.notify_all()

    def _train(self) -> None:
        clock = TrainClock(torch.device(self.device))
        while True:
            with self._lock:
                while not self._closed and self._idle():
                    self._lock.wait(0.1)
                if self._closed:
                    return
                admit, leaving = self._changes()
            if admit or leaving:
                self._charge(clock)
                for member in leaving:
                    self._groups[member.signature].rows[member.row] = None
                for member in admit:
                    self._admit(member, self._group(member.signature))
            for group in list(self._groups.values()):
                if not any(group.rows):
                    continue
                self._step(group)
                due = [m for m in group.rows
                       if m is not None and m.progress.step in m.plan.eval_steps]  # fmt: skip
                if due:
                    self._charge(clock)
                    self._evaluate(group, due)
                    group.model.train()
                    clock.restart()

    def _training(self) -> list[PoolTrial]:
        return [m for g in self._groups.values() for m in g.rows if m is not None]

    def _idle(self) -> bool:
        """Nothing to train, or (under the lock) an empty pool still gathering its first trials:
        it starts once ``slots`` trials wait (or every trial :meth:`expect` said is still to
        come), or ``gather_s`` after the first joined, so that trials Tune starts together train
        together (one evaluation for all, no ramp)."""
        if self._training():
            return False
        if not self._pending:
            return True
        gathering = time.monotonic() - self._pending[0].joined < self.gather_s
        want = self.slots
        if self._expected is not None:  # the trials still to join, beside those waiting
            want = min(want, len(self._pending) + max(0, self._expected - self._joined))
        return len(self._pending) < want and gathering

    def _changes(self) -> tuple[list[PoolTrial], list[PoolTrial]]:
        """(trials to admit, trials leaving), under the lock: silent ones leave (done ones left
        at their last evaluation); the queue's first take the free rows of their groups."""
        now = time.monotonic()
        leaving = [m for m in self._training() if now - m.polled > self.lease_s]
        for member in leaving:
            self._members.pop(member.token, None)
        self._pending = [m for m in self._pending
                         if m.token in self._members and now - m.polled <= self.lease_s]  # fmt: skip
        free = {sig: g.free() for sig, g in self._groups.items()}
        for member in leaving:
            free[member.signature] += 1
        admit, waiting = [], []
        for member in self._pending:
            left = free.get(member.signature, self.slots)
            (admit if left > 0 else waiting).append(member)
            free[member.signature] = left - 1 if left > 0 else left
        self._pending = waiting
        return admit, leaving

    def _group(self, signature: tuple[Any, ...]) -> PoolGroup:
        """The signature's group, built on first use from its template."""
        if signature not in self._groups:
            template, train = self._templates[signature]
            with self._rng:
                group = build_group(template, train, self.data, slots=self.slots,
                                    device=self.device)  # fmt: skip
            with self._lock:
                self._groups[signature] = group
        return self._groups[signature]

    def _admit(self, member: PoolTrial, group: PoolGroup) -> None:
        member.row = group.rows.index(None)
        group.rows[member.row] = member
        group.model.load_row(member.row, member.model)
        group.stepper.set_row(member.row, member.train)
        group.loss_sums[member.row] = 0.0
        group.trials += 1
        member.started = time.perf_counter()
        member.reporter = TrialReporter(member.model, member.train, mode=member.plan.mode,
                                        device=self.device, started=member.started)  # fmt: skip

    def _step(self, group: PoolGroup) -> None:
        """One fused step of ``group``: of its trials' rows, and when graphed of idle ones up to
        a row count it keeps graphs for (on no data, at lr 0: :meth:`FusedStep.select`)."""
        stepper = group.stepper
        rows = stepper.select([i for i, m in enumerate(group.rows) if m is not None])
        parts = [IDLE if group.rows[i] is None else group.rows[i].next_rows(self.data)
                 for i in rows]  # fmt: skip
        batch, counts = step_batch(self.data.train, parts, pack=stepper.pack,
                                   slots=group.train.batch_size)  # fmt: skip
        lrs = torch.tensor([0.0 if m is None else m.train.lr * m.factor(m.progress.step)
                            for m in group.rows])  # fmt: skip
        if self.device.startswith("cuda"):  # pinned: copies that do not wait for the GPU
            batch, lrs = pinned(batch), lrs.pin_memory()
        stepper.lr.copy_(lrs, non_blocking=True)
        with self._rng:
            losses = stepper(batch)
        stepper.add_losses(losses, group.loss_sums)
        self.steps += 1
        for i, (samples, tokens, padded) in zip(rows, counts, strict=True):
            m = group.rows[i]
            if m is not None:
                m.progress.advance(samples, tokens, padded)
                m.loss_steps += 1

    def _charge(self, clock: TrainClock) -> None:
        """The training segment that ends now to every trial training in it."""
        start, end = clock.lap()
        for m in self._training():
            m.progress.train_s += end - max(start, m.started)

    def _evaluate(self, group: PoolGroup, due: list[PoolTrial]) -> None:
        for member, report in evaluate_due(group, due, self.data, slots=self.slots,
                                           device=self.device):  # fmt: skip
            with self._lock:  # done and its last report at once: see evaluate_due
                member.done = report["status"] == "completed"
                if member.done:
                    group.rows[member.row] = None  # free for the next trial
                member.reports.append(report)
                self._lock.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            # chained: the trial's error (and Ray's) carries where the training thread failed
            raise RuntimeError(
                f"the fused pool's training failed: {self._error!r}"
            ) from self._error


__all__ = ["GATHER_S", "LEASE_S", "WEIGHTS_KEY", "FusedPool", "build_member"]
