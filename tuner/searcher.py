"""Ray Tune's OptunaSearch, told the truth about trials that ASHA stopped.

Ray 2.60's ``OptunaSearch.on_trial_complete`` tells Optuna ``COMPLETE`` with the *last* result of
every trial that ended without an error, including a trial that ASHA stopped after one
evaluation; with several objectives it also ignores intermediate results. A stopped trial would
then sit on Optuna's Pareto front with a low-fidelity score as if it had finished. Here a trial
is COMPLETE only when its last result has ``fidelity == 1`` (every planned evaluation done);
otherwise it is PRUNED (single objective: Optuna keeps its last intermediate value) or FAIL.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from optuna.samplers import NSGAIISampler, TPESampler
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

FIDELITY = "fidelity"  # evaluations done / evaluations planned, reported by every trial result
STATUS = "status"


def trial_state(result: dict[str, Any] | None, *, error: bool) -> TrialState:
    """The Optuna state a finished Tune trial deserves (pure: tested without Ray)."""
    if error or not result:
        return TrialState.FAIL
    if result.get(STATUS) in ("failed", "oom"):
        return TrialState.FAIL
    if result.get(FIDELITY, 0.0) < 1.0:
        return TrialState.PRUNED
    return TrialState.COMPLETE


class FidelityOptunaSearch(OptunaSearch):
    """OptunaSearch that tells stopped trials as PRUNED and failed ones as FAIL, and, restored
    by a resumed Tune run, FAIL to trials that the driver lost (``tuner.reconcile``)."""

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        from tuner.reconcile import reconcile_searcher

        super().restore_from_dir(checkpoint_dir)
        reconcile_searcher(self, checkpoint_dir)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Limit the trials at once here, not in Ray's ConcurrencyLimiter: the limiter's live
        trials come back from a saved state as they were, and a trial the driver lost would hold
        its slot for the rest of the study (with one slot, no trial would start again)."""
        self._max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        live = sum(1 for t in self._ot_trials if t not in self._completed_trials)
        limit = getattr(self, "_max_concurrent", None)  # None: a searcher pickled before this
        if trial_id not in self._ot_trials and limit is not None and live >= limit:
            return None
        return super().suggest(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        state = trial_state(result, error=error)
        values = None
        if state == TrialState.COMPLETE:
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            values = [result[m] for m in metrics]  # type: ignore[index]
        try:
            self._ot_study.tell(ot_trial, values, state=state)
        except ValueError as exc:  # e.g. a NaN score: record the trial as failed, keep the study
            log.warning("trial %s: %s; told as FAIL", trial_id, exc)
            self._ot_study.tell(ot_trial, None, state=TrialState.FAIL)
        self._completed_trials.add(trial_id)


_RLOCK = type(threading.RLock())
_LOCK_TYPES = (type(threading.Lock()), _RLOCK)
_LOCKS = "_peft_tune_locks"


class PicklableSampler:
    """A sampler that pickles with its locks left out and made anew on load.

    Ray pickles the search algorithm when it builds the Tuner and on every experiment checkpoint
    (that is how a study resumes with its searcher's memory). Optuna 5.1's NSGA-II sampler holds a
    ``threading.Lock`` (``BaseGASampler._thread_lock``), which does not pickle: every study with
    several objectives died before its first trial. A lock guards nothing across processes, so a
    fresh one is what an unpickled sampler needs."""

    def __getstate__(self) -> dict[str, Any]:
        locks = {key: isinstance(value, _RLOCK) for key, value in self.__dict__.items()
                 if isinstance(value, _LOCK_TYPES)}  # fmt: skip
        state = {key: value for key, value in self.__dict__.items() if key not in locks}
        return {**state, _LOCKS: locks}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        locks = state.pop(_LOCKS, {})
        self.__dict__.update(state)
        for key, reentrant in locks.items():
            setattr(self, key, threading.RLock() if reentrant else threading.Lock())


class PicklableNSGAIISampler(PicklableSampler, NSGAIISampler):
    """NSGA-II for studies with several objectives; pickles on every Optuna version."""


class PicklableTPESampler(PicklableSampler, TPESampler):
    """TPE for studies with one objective; pickles on every Optuna version."""
