"""The accuracy-vs-parameters Pareto front as data, and the same trials as an Optuna study.

The front is chosen on **dev** (``y="dev_score"``): a point's test score is carried beside it,
reported for what dev chose, never used to choose (a front chosen on test would select on the
split that is meant to measure the selection). Only completed trials can be on the front: a trial that ASHA stopped after one evaluation reports
a low-fidelity score, which is not comparable with a finished one however high it is. Those
trials are listed in :attr:`ParetoInfo.excluded` with the reason, so a plot can still show them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.selection import completed, not_completed
from search_spaces.errors import ConfigError, one_of

MODES = ("max", "min")
KEEP = ("trial_id", "status", "fidelity", "method", "task", "seed", "train_samples")
REPORTED = ("test_score",)  # carried beside each point, never an objective
SELECTION_SPLIT = "dev"


@dataclass(frozen=True, eq=False)
class ParetoInfo:
    """Front (sorted by ``x``), dominated and excluded trials; ``x``/``y`` name the objectives."""

    x: str
    y: str
    x_mode: str
    y_mode: str
    front: pd.DataFrame
    dominated: pd.DataFrame
    excluded: pd.DataFrame  # not completed, or completed without both objectives; has ``reason``


def dominated_mask(points: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """For rows of ``points`` (n x k), whether another row is at least as good in every objective
    and strictly better in one (equal points do not dominate each other)."""
    signs = np.array([1.0 if m == "max" else -1.0 for m in modes])
    p = points * signs
    ge = (p[None, :, :] >= p[:, None, :]).all(axis=2)  # [i, j]: j at least as good as i
    gt = (p[None, :, :] > p[:, None, :]).any(axis=2)
    return (ge & gt).any(axis=1)


def _reason(row: pd.Series, x: str, y: str) -> str:
    if row.get("status") != "completed":
        fidelity = row.get("fidelity")
        at = (
            f" at fidelity {fidelity:.2f}"
            if isinstance(fidelity, float) and fidelity == fidelity
            else ""
        )
        return f"{row.get('status')}{at}"
    if row.get("fidelity", 1.0) < 1.0:
        return f"fidelity {row.get('fidelity'):.2f} < 1"
    return f"no {x if pd.isna(row.get(x)) else y}"


def pareto_front(
    trials: pd.DataFrame,
    *,
    x: str = "trainable_params",
    y: str = "dev_score",
    x_mode: str = "min",
    y_mode: str = "max",
) -> ParetoInfo:
    """The non-dominated completed trials in (``x``, ``y``), with the :data:`REPORTED` scores
    carried beside them. Raises ``ConfigError`` for a mode other than max/min, an objective the
    study never reported, or a test score as an objective (fronts are chosen on dev)."""
    if "test" in (x, y) or any(c.startswith("test_") for c in (x, y)):
        raise ConfigError(f"a front is chosen on dev, not on test (got x={x!r}, y={y!r})")
    for name, mode in (("x_mode", x_mode), ("y_mode", y_mode)):
        if mode not in MODES:
            raise one_of(name, mode, MODES)
    for col in (x, y):
        if col not in trials.columns:
            raise ConfigError(f"objective {col!r} is not a column of the trials; have: "
                              f"{', '.join(trials.columns)}")  # fmt: skip
    keep = list(dict.fromkeys(c for c in (*KEEP, x, y, *REPORTED) if c in trials.columns))
    done = completed(trials)
    usable = done[done[x].notna() & done[y].notna()]
    excluded = pd.concat([not_completed(trials), done.drop(index=usable.index)])
    excluded = excluded[keep].assign(reason=[_reason(r, x, y) for _, r in excluded.iterrows()])
    points = usable[[x, y]].to_numpy(dtype=float)
    mask = dominated_mask(points, (x_mode, y_mode)) if len(points) else np.zeros(0, bool)
    order = [x, y, "trial_id"]
    front = usable[~mask][keep].sort_values(
        order, ascending=[x_mode == "min", y_mode == "max", True]
    )
    dominated = usable[mask][keep].sort_values(order)
    return ParetoInfo(x, y, x_mode, y_mode, front.reset_index(drop=True),
                      dominated.reset_index(drop=True), excluded.reset_index(drop=True))  # fmt: skip


def _attr(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def optuna_study(
    trials: pd.DataFrame,
    objectives: Sequence[tuple[str, str]] = (("trainable_params", "min"), ("dev_score", "max")),
    *,
    study_name: str = "peft-tune",
) -> Any:
    """An in-memory Optuna study of the trials, for Optuna's plots (``plot_pareto_front``).

    Completed trials with every objective are COMPLETE with those values; other trials are
    PRUNED (stopped early) or FAIL, so Optuna keeps them off its front too. Each trial's params
    and figures are user attributes (``trial_id``, ``method``, ...).
    """
    import optuna

    for metric, mode in objectives:
        if metric.startswith("test"):
            raise ConfigError(f"a front is chosen on dev, not on test (got objective {metric!r})")
        if mode not in MODES:
            raise one_of(f"mode of {metric}", mode, MODES)
    directions = ["maximize" if mode == "max" else "minimize" for _, mode in objectives]
    study = optuna.create_study(directions=directions, study_name=study_name)
    names = [m for m, _ in objectives]
    done = set(completed(trials).index)
    for idx, row in trials.iterrows():
        attrs = {k: _attr(v) for k, v in row.items()}
        values = [_attr(row.get(n)) for n in names]
        if idx in done and all(v is not None for v in values):
            trial = optuna.trial.create_trial(values=values, user_attrs=attrs)
        else:
            stopped = row.get("status") == "stopped"
            state = optuna.trial.TrialState.PRUNED if stopped else optuna.trial.TrialState.FAIL
            trial = optuna.trial.create_trial(state=state, user_attrs=attrs)
        study.add_trial(trial)
    return study
