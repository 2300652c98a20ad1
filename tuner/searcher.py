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
from typing import Any

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
