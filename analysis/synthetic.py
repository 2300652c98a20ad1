"""Synthetic trials with known answers, built through the loaders' own path (:func:`build_frames`).

For tests and demos: ``trials_frame([trial("a", params={...}, dev=0.8, test=0.79), ...])`` gives
the same canonical frame a real study would, with histories whose dev score climbs to ``dev``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.params import param_text
from analysis.trials import TrialRecord, build_frames

PLANNED_EVALS = 3
SECONDS_PER_EVAL = 10.0


def trial(
    trial_id: str,
    *,
    params: Mapping[str, Any],
    dev: float,
    test: float | None = None,
    status: str = "completed",
    evaluations: int | None = None,
    curve: Sequence[float] | None = None,
    final: Mapping[str, float] | None = None,
) -> TrialRecord:
    """One trial whose last evaluation scores ``dev`` (and ``test`` when it completes).

    ``evaluations`` defaults to all :data:`PLANNED_EVALS` for a completed trial and 1 otherwise;
    ``curve`` gives the dev score of each evaluation (default: rising linearly to ``dev``).
    """
    n = evaluations or (PLANNED_EVALS if status == "completed" else 1)
    curve = list(curve) if curve is not None else [dev * (i + 1) / n for i in range(n)]
    history = []
    for i, score in enumerate(curve, start=1):
        metrics = {"fidelity": i / PLANNED_EVALS, "dev_score": float(score),
                   "best_dev_score": float(max(curve[:i])), "wall_s": i * SECONDS_PER_EVAL}  # fmt: skip
        for key in ("trainable_params", "added_params"):
            if key in params:
                metrics[key] = float(params[key])
        if i == n and n == PLANNED_EVALS and test is not None:
            metrics["test_score"] = float(test)
        if i == n:
            metrics.update(final or {})
        history.append((i, metrics))
    text = {k: param_text(v) for k, v in params.items()}
    return TrialRecord(trial_id, status, text, tuple(history))


def trials_frame(records: Iterable[TrialRecord]) -> pd.DataFrame:
    """The canonical trials table of ``records``."""
    return build_frames(records)[0]


def history_frame(records: Iterable[TrialRecord]) -> pd.DataFrame:
    return build_frames(records)[1]
