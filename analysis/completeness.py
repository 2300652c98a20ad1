"""What a (partial) study lacks: unfinished trials, planned arms and tasks without a completed
trial, and metrics that no completed trial reported. Computed from the trials table and the
resolved experiment the study recorded (its ``experiment.json``), so a preset's smaller plan is
judged against itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.params import param_text, parse_param
from analysis.selection import completed, with_seed
from tuner.space import arm_rates

# E1 is launched once per task (``--set task=...``); the study plan names these three.
PLANNED_TASKS = {"e1_single_task": ("glue/sst2", "imdb", "newsgroups/bydate")}
# Metrics the efficiency table needs beyond the scores; peak_mem_mib exists on GPUs only.
EFFICIENCY_METRICS = ("train_samples_per_s", "time_to_best_s", "latency_ms", "peak_mem_mib")
# killed: a trial a killed driver lost before Tune saved it; --resume ran another in its place
STATUS_ORDER = ("completed", "stopped", "running", "killed", "failed", "oom", "infeasible")


@dataclass(frozen=True)
class Completeness:
    """Everything a report must say is missing before it shows a number."""

    experiment: str
    n_trials: int
    status_counts: tuple[tuple[str, int], ...]  # (status, count), in STATUS_ORDER
    not_completed: tuple[tuple[str, str], ...]  # (trial_id, status) of every unfinished trial
    missing_tasks: tuple[str, ...]  # planned tasks without a completed trial
    missing_arms: tuple[
        str, ...
    ]  # planned grid arms without a completed trial, e.g. "method=lora seed=2"
    missing_metrics: tuple[str, ...]  # expected metrics that no completed trial reported

    @property
    def complete(self) -> bool:
        gaps = self.not_completed or self.missing_tasks or self.missing_arms or self.missing_metrics
        return self.n_trials > 0 and not gaps

    @property
    def gaps(self) -> tuple[tuple[str, str], ...]:
        """Unfinished trials other than those ASHA stopped (a stop is the scheduler's design)."""
        return tuple((t, s) for t, s in self.not_completed if s != "stopped")

    @property
    def stopped(self) -> tuple[str, ...]:
        return tuple(t for t, s in self.not_completed if s == "stopped")

    def count(self, status: str) -> int:
        return dict(self.status_counts).get(status, 0)


def completeness(experiment: str, trials: pd.DataFrame, plan: Mapping[str, Any]) -> Completeness:
    """The gaps of ``trials`` against ``plan`` (the resolved experiment; may be empty)."""
    done = completed(trials)
    statuses = trials["status"].value_counts().to_dict() if "status" in trials else {}
    order = [*STATUS_ORDER, *sorted(set(statuses) - set(STATUS_ORDER))]
    counts = tuple((s, int(statuses[s])) for s in order if s in statuses)
    unfinished = trials.drop(index=done.index) if not trials.empty else trials
    pending = tuple(zip(unfinished.get("trial_id", []), unfinished.get("status", []), strict=True))
    return Completeness(
        experiment=experiment,
        n_trials=len(trials),
        status_counts=counts,
        not_completed=tuple((str(t), str(s)) for t, s in pending),
        missing_tasks=_missing_tasks(experiment, done, plan),
        missing_arms=_missing_arms(done, plan),
        missing_metrics=_missing_metrics(experiment, done, plan),
    )


def _missing_tasks(experiment: str, done: pd.DataFrame, plan: Mapping[str, Any]) -> tuple[str, ...]:
    planned = PLANNED_TASKS.get(experiment) or ((plan["task"],) if plan.get("task") else ())
    have = set(done["task"].dropna()) if "task" in done else set()
    return tuple(t for t in planned if t not in have)


def planned_arms(plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The grid arms the study was to run, each on every seed of its seeds phase (a grid runs its
    arms in order, each at its learning rates, so fewer samples run the first arms only)."""
    search = plan.get("search") or {}
    if search.get("kind") != "grid":
        return []
    points = int(search.get("lr_points") or 1)
    budget = int(plan.get("num_samples") or 0) or None
    arms = []
    for arm in search.get("configs") or ():
        if budget is not None and budget <= 0:
            break
        arms.append(dict(arm))
        budget = None if budget is None else budget - len(arm_rates(arm, points))
    seeds = tuple(plan.get("seeds") or ())
    return [{**a, "seed": s} for a in arms for s in seeds] if len(seeds) > 1 else arms


def _missing_arms(done: pd.DataFrame, plan: Mapping[str, Any]) -> tuple[str, ...]:
    done = with_seed(done)
    missing = []
    for arm in planned_arms(plan):
        mask = pd.Series(True, index=done.index)
        for key, value in arm.items():
            if key not in done:
                mask &= False
                continue
            want = parse_param(param_text(value))
            mask &= done[key].map(lambda v, w=want: v == w).astype(bool)
        if not mask.any():
            missing.append(" ".join(f"{k}={v}" for k, v in arm.items()))
    return tuple(dict.fromkeys(missing))


def _missing_metrics(
    experiment: str, done: pd.DataFrame, plan: Mapping[str, Any]
) -> tuple[str, ...]:
    if done.empty:
        return ()
    wanted = ["test_score"]
    wanted += [f"shift_{name}_score" for name in plan.get("extra_tests") or ()]
    if experiment == "e5_efficiency":
        wanted += list(EFFICIENCY_METRICS)
        if "method" in done and (done["method"] == "lora").any():
            wanted.append("latency_merged_ms")
    return tuple(m for m in wanted if m not in done or done[m].isna().all())
