"""Which trials enter a table, which configuration stands for a method, and how seeds pair up.

Rules every table and test shares:

* only completed trials (``status == "completed"`` and ``fidelity == 1``) carry a score; a trial
  that ASHA stopped early reports a low-fidelity score that is not comparable;
* a *configuration* is a trial's params without its seed (and without the counts derived from the
  params); a method's configuration in a table is the one with the best mean **dev** score over
  the seeds the candidates share, so the reported test score never chooses the winner;
* two arms pair up on equal seeds within the same group (task, training size, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tuner.tracking import PARAM_KEYS

POINTS = 100.0  # scores are fractions in [0, 1]; tables and effects are in points (x 100)
FIDELITY_DONE = 1.0 - 1e-9
# Params that identify a trial but not its configuration: the seed, and counts derived from params.
NOT_CONFIG = ("seed", "trainable_params", "added_params", "budget_deviation")
SELECT_BY = "dev_score"


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that ran every planned evaluation."""
    if trials.empty or "status" not in trials:
        return trials.iloc[0:0]
    done = trials["status"].eq("completed") & trials["fidelity"].ge(FIDELITY_DONE)
    return trials[done]


MAJORITY = "dev_majority_score"  # what always answering the train split's majority class scores
PROBE = "dev_probe_score"  # what a linear head on the frozen backbone scores
NOT_LEARNED = "did not learn"
UNDER_PROBE = "below the head-only probe"
_TIE = 1e-9  # a score equal to a baseline's up to float rounding is the baseline's


def learning_flag(dev: float | None, majority: float | None, probe: float | None) -> str | None:
    """The study rules' flag of a dev score: :data:`NOT_LEARNED` at or below the majority class,
    :data:`UNDER_PROBE` above it but below the head-only probe (a bug until shown otherwise),
    None when it beats both; an unknown (None or NaN) score or baseline flags nothing. The one
    rule of "did not learn", for a table's rows as for a study's console lines."""
    if dev is None or dev != dev:
        return None
    if majority is not None and dev <= majority + _TIE:
        return NOT_LEARNED
    if probe is not None and dev < probe - _TIE:
        return UNDER_PROBE
    return None


def at_or_below_majority(scores: pd.DataFrame) -> pd.Series:
    """Rows whose dev score is at or below their majority-class score (a row without the
    baseline is not: nothing to compare with): :func:`learning_flag`'s "did not learn"."""
    pairs = zip(scores[SELECT_BY], scores[MAJORITY], strict=True)
    flags = [learning_flag(d, m, None) for d, m in pairs]
    return pd.Series([f == NOT_LEARNED for f in flags], index=scores.index, dtype=bool)


def did_not_learn(trials: pd.DataFrame) -> pd.Series:
    """Per completed trial: its dev score is at or below the majority class's (a trial of a study
    that did not record the baseline counts as learned: nothing to compare with)."""
    done = completed(trials)
    if done.empty or MAJORITY not in done or SELECT_BY not in done:
        return pd.Series(False, index=done.index)
    return at_or_below_majority(done)


def below_probe(trials: pd.DataFrame) -> pd.Series:
    """Per completed trial: above the majority class (else it did not learn, :func:`did_not_learn`)
    but below the head-only probe on dev: the method added nothing a trained head alone could
    not learn (a bug until shown otherwise, by the study rules); a trial without the probe
    recorded is not flagged. Flagged, not kept out of verdicts: only "did not learn" is."""
    done = completed(trials)
    if done.empty or PROBE not in done or SELECT_BY not in done:
        return pd.Series(False, index=done.index)
    majority = done[MAJORITY] if MAJORITY in done else pd.Series(None, index=done.index)
    rows = zip(done[SELECT_BY], majority, done[PROBE], strict=True)
    flags = [learning_flag(d, m, p) for d, m, p in rows]
    return pd.Series([f == UNDER_PROBE for f in flags], index=done.index, dtype=bool)


def not_completed(trials: pd.DataFrame) -> pd.DataFrame:
    if trials.empty or "status" not in trials:
        return trials.iloc[0:0]
    return trials.drop(index=completed(trials).index)


def config_key(trials: pd.DataFrame) -> pd.Series:
    """One string per row naming its configuration (params other than :data:`NOT_CONFIG`)."""
    cols = [c for c in PARAM_KEYS if c in trials.columns and c not in NOT_CONFIG]
    if not cols or trials.empty:
        return pd.Series("", index=trials.index, dtype=object)
    text = trials[cols].astype(str)
    return text.apply(lambda row: "|".join(f"{c}={v}" for c, v in row.items()), axis=1)


def with_seed(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with a ``seed`` column (0, the training default, where none was logged)."""
    if "seed" in trials.columns:
        return trials.assign(seed=trials["seed"].fillna(0).astype(int))
    return trials.assign(seed=0)


def select_configs(
    trials: pd.DataFrame, by: Sequence[str], *, select_by: str = SELECT_BY
) -> pd.DataFrame:
    """Completed rows of the best configuration per ``by`` group: among the configurations run on
    the most seeds, the best mean ``select_by`` over the seeds they share.

    A seeds phase re-runs a search's best configurations (``Experiment.seeds_top`` per arm) on
    every seed: they are the candidates, compared on their mean over those seeds, so a rate that
    won on one seed and diverges on another loses to a steadier one, and a configuration run once
    cannot win on its luck alone against a three-seed mean. Without a seeds phase every
    configuration ran one seed and the best on it wins. A (configuration, seed) run twice counts
    once (the later run); ties go to the first configuration key. Groups whose ``by`` columns are
    missing are left out; rows lacking ``select_by`` rank last.
    """
    done, ranked = candidates(trials, by, select_by=select_by)
    if ranked.empty:
        return done.iloc[0:0]
    best = ranked.drop_duplicates(subset=list(by), keep="first")
    keep = done.merge(best[[*by, "_config"]], on=[*by, "_config"], how="inner")
    return keep.drop(columns=["_config"])


def candidates(
    trials: pd.DataFrame, by: Sequence[str], *, select_by: str = SELECT_BY
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The completed rows (one per configuration and seed, with their ``_config`` key) and, per
    ``by`` group, its candidates ranked best first: the configurations run on the most seeds,
    with ``_score``, their mean ``select_by`` over the seeds they share, and ``_seeds``, those
    seeds (:func:`select_configs` takes the first of each group)."""
    done = with_seed(completed(trials))
    by = list(by)
    if done.empty or any(c not in done.columns for c in by):
        return done.iloc[0:0], pd.DataFrame(columns=[*by, "_config", "_score", "_seeds"])
    done = done.assign(_config=config_key(done))
    done = done.drop_duplicates(subset=[*by, "_config", "seed"], keep="last")
    score = done[select_by] if select_by in done else pd.Series(np.nan, index=done.index)
    scored = done.assign(_score=score)
    ranked = []
    for _, group in scored.groupby(by, dropna=False, sort=False):
        seeds = group.groupby("_config")["seed"].agg(frozenset)
        most = seeds[seeds.map(len) == seeds.map(len).max()]
        shared = frozenset.intersection(*most)  # empty only if they ran different seeds
        on = group[group["_config"].isin(most.index) & (group["seed"].isin(shared) | (not shared))]
        means = on.groupby([*by, "_config"], dropna=False)["_score"].mean().reset_index()
        ranked.append(means.assign(_seeds=[tuple(sorted(shared))] * len(means)))
    means = pd.concat(ranked, ignore_index=True)
    means["_score"] = means["_score"].fillna(-np.inf)
    order = means.sort_values([*by, "_score", "_config"],
                              ascending=[True] * len(by) + [False, True])  # fmt: skip
    return done, order.reset_index(drop=True)


def paired(
    trials: pd.DataFrame,
    score: str,
    *,
    treatment: str,
    control: str,
    by: Sequence[str],
) -> pd.DataFrame:
    """Seed-paired scores of two methods: one row per (``by``..., seed) where both completed.

    Columns: ``by``..., ``seed``, ``treatment``, ``control`` and ``diff`` (treatment - control),
    all in points. Each method is represented by its configuration selected on dev per group.
    """
    by = list(by)
    cols = [*by, "seed", "treatment", "control", "diff"]
    chosen = select_configs(trials, [*by, "method"])
    if chosen.empty or score not in chosen:
        return pd.DataFrame(columns=cols)
    chosen = chosen[chosen[score].notna()]
    arms = {}
    for name, method in (("treatment", treatment), ("control", control)):
        rows = chosen[chosen["method"] == method]
        arms[name] = rows.groupby([*by, "seed"], dropna=False)[score].mean() * POINTS
    if any(arm.empty for arm in arms.values()):
        return pd.DataFrame(columns=cols)
    both = pd.concat(arms, axis=1, join="inner").reset_index()
    both["diff"] = both["treatment"] - both["control"]
    return both[cols].sort_values([*by, "seed"]).reset_index(drop=True)
