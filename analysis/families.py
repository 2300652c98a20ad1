"""One study from the members of a family (``glue_methods``: one experiment per GLUE task): their
trials and histories stacked, their gaps merged, members without a study listed as missing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from analysis.artifacts import SOURCE_SEPARATOR
from analysis.completeness import Completeness
from analysis.trials import Study
from search_spaces.errors import ConfigError


def combine(family: str, members: Sequence[str], load: Callable[[str], Study]) -> Study:
    """Load each member with ``load`` (a member without a study is skipped and reported as a
    missing task) and stack them. Raises ``ConfigError`` when no member has a study."""
    studies, absent = [], []
    for name in members:
        try:
            studies.append(load(name))
        except ConfigError:
            absent.append(name)
    if not studies:
        raise ConfigError(f"family {family!r}: none of its experiments has a study "
                          f"({', '.join(members)})")  # fmt: skip
    trials = pd.concat([s.trials for s in studies], ignore_index=True, sort=False)
    history = pd.concat([s.history for s in studies], ignore_index=True, sort=False)
    plan = {"name": family, "summary": f"Family {family}: {', '.join(s.experiment for s in studies)}"
            + (f" (no study yet: {', '.join(absent)})" if absent else ""),
            "members": [s.plan for s in studies]}  # fmt: skip
    source = SOURCE_SEPARATOR.join(s.source for s in studies)
    return Study(family, trials, history, merge([s.completeness for s in studies], family, absent),
                 plan, source, tuple(run for s in studies for run in s.mlflow_runs))  # fmt: skip


def merge(parts: Sequence[Completeness], family: str, absent: Sequence[str]) -> Completeness:
    counts: dict[str, int] = {}
    for part in parts:
        for status, n in part.status_counts:
            counts[status] = counts.get(status, 0) + n
    return Completeness(
        experiment=family,
        n_trials=sum(p.n_trials for p in parts),
        status_counts=tuple(counts.items()),
        not_completed=tuple(x for p in parts for x in p.not_completed),
        missing_tasks=(*(t for p in parts for t in p.missing_tasks), *absent),
        missing_arms=tuple(f"{p.experiment}: {a}" for p in parts for a in p.missing_arms),
        missing_metrics=tuple(dict.fromkeys(m for p in parts for m in p.missing_metrics)),
    )


__all__ = ["combine", "merge"]
