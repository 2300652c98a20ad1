"""Where a training run stands (:class:`Progress`), what each evaluation reports
(:class:`EvalReport`) and how a run ended (:class:`FitResult`): one tally for a model trained
alone, for each of K fused trials and for each trial of a fused pool.

The evaluation plan and the best-score rule are the plan's (:class:`~.plan.FitPlan`);
:meth:`Progress.record` applies them. :func:`scheduled` walks the batches of the remaining steps,
epoch after epoch, from where a progress stands (a resumed run continues its epoch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from trainables.inference import synchronize
from trainables.training.plan import FitPlan

MIB = 2**20
B = TypeVar("B")


class Graphs(Protocol):
    """What a result reads of a training step (:class:`~.steps.TrainStep`)."""

    @property
    def captured(self) -> int: ...

    @property
    def off_reason(self) -> str | None: ...


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
    capture_s: float  # of train_s, the seconds this fit call spent capturing graphs
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
class Progress:
    """Where a run stands; with the optimizer, scheduler and RNG states it is the loop state (its
    fields are the saved state's: a state resumes by ``Progress(**saved)``)."""

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

    def advance(self, samples: int, tokens: int, padded: int) -> None:
        """One step taken on ``samples`` rows of ``tokens`` real and ``padded`` padded tokens."""
        self.step += 1
        self.batch_index += 1
        self.samples_seen += samples
        self.tokens_seen += tokens
        self.padded_tokens_seen += padded

    def record(self, metrics: dict[str, float], plan: FitPlan, wall_s: float) -> None:
        """Count an evaluation's ``metrics`` (``score`` the primary one) at this step; a better
        score than any before (in the plan metric's ``mode``) is the best."""
        self.evaluation += 1
        self.dev_metrics = metrics
        score = metrics["score"]
        if plan.improves(self.best_score, score):
            self.best_score, self.best_step, self.time_to_best_s = score, self.step, wall_s

    def record_peak_memory(self, device: torch.device) -> None:
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / MIB
            self.peak_mem_mib = max(peak, self.peak_mem_mib or 0.0)

    @property
    def train_samples_per_s(self) -> float:
        return self.samples_seen / self.train_s if self.train_s > 0 else 0.0

    def report(
        self,
        plan: FitPlan,
        *,
        train_loss: float,
        dev_loss: float,
        graphed_steps: int = 0,
        capture_s: float = 0.0,
        state: Callable[[], dict[str, Any]] | None = None,
    ) -> EvalReport:
        """The report of the evaluation just recorded."""
        return EvalReport(
            step=self.step,
            epoch=self.step / plan.steps_per_epoch,
            evaluation=self.evaluation,
            train_loss=train_loss,
            dev_loss=dev_loss,
            dev_metrics=self.dev_metrics,
            dev_score=self.dev_metrics["score"],
            samples_seen=self.samples_seen,
            wall_s=self.wall_s,
            train_samples_per_s=self.train_samples_per_s,
            tokens_seen=self.tokens_seen,
            train_s=self.train_s,
            graphed_steps=graphed_steps,
            capture_s=capture_s,
            state=state or no_state,
        )

    def result(self, status: str, graphs: Graphs | None = None) -> FitResult:
        return FitResult(
            status=status,
            steps=self.step,
            evaluations=self.evaluation,
            best_dev_score=self.best_score,
            best_step=self.best_step,
            time_to_best_s=self.time_to_best_s,
            dev_metrics=self.dev_metrics,
            train_samples_per_s=self.train_samples_per_s,
            wall_s=self.wall_s,
            peak_mem_mib=self.peak_mem_mib,
            samples_seen=self.samples_seen,
            tokens_seen=self.tokens_seen,
            padded_tokens_seen=self.padded_tokens_seen,
            cuda_graphs=0 if graphs is None else graphs.captured,
            graphs_off=None if graphs is None else graphs.off_reason,
        )


def no_state() -> dict[str, Any]:
    raise RuntimeError("this run keeps no loop state to resume from (a fused trial's)")


class TrainClock:
    """A run's wall clock (from ``wall_s`` already spent: a resumed run's) and its training
    segments: :meth:`lap` ends one (after the device's queued kernels, so that they count as
    training), :meth:`restart` begins the next, evaluations left out between them."""

    def __init__(self, device: torch.device, *, wall_s: float = 0.0) -> None:
        self.device = device
        self.started = time.perf_counter() - wall_s
        self.segment = time.perf_counter()

    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    def lap(self) -> tuple[float, float]:
        """(start, end) of the training segment that ends now."""
        synchronize(self.device)
        start, self.segment = self.segment, time.perf_counter()
        return start, self.segment

    def restart(self) -> None:
        self.segment = time.perf_counter()


def scheduled(
    plan: FitPlan, progress: Progress, batches: Callable[[int, int], Iterable[B]]
) -> Iterator[B]:
    """The batches of the plan's remaining steps: ``batches(epoch, start)`` of each epoch from
    batch ``start`` (where ``progress`` stands, then 0), until ``progress`` is done. The caller
    advances ``progress`` by each batch before taking the next."""
    while not progress.done(plan):
        for batch in batches(progress.epoch, progress.batch_index):
            yield batch
            if progress.done(plan):
                return
        progress.epoch += 1
        progress.batch_index = 0


__all__ = ["MIB", "EvalReport", "FitResult", "Progress", "TrainClock", "scheduled"]
