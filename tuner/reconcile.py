"""After ``--resume``: every store agrees with the trials Tune restored.

Tune saves its state (trials, searcher) every few seconds; a driver killed in between loses the
trials it started since the last save. Tune resumes what it saved and starts new trials in the
place of the lost ones, but MLflow already holds a child run for a lost trial, and the searcher's
Optuna study may hold it as a RUNNING trial. Nothing would ever finish them. Here each store is
reconciled with the restored Tune state, once, when the resumed driver starts:

* MLflow: a child run of this phase whose trial Tune does not know is closed as ``KILLED``
  (tags ``status=killed`` and ``killed_reason``); a child of a trial Tune restored as finished
  that is still RUNNING is finished by the logger (its status from Tune's last result).
* Optuna: a RUNNING trial whose Tune trial id is not in the restored state is told ``FAIL``
  (user attr ``killed_reason``), so no sampler waits on it or counts it as pending; one Tune saved
  as finished is told its result. A grid does not count lost trials (:func:`killed_before`).

Trials Tune does know are resumed by Tune itself, under their own id, from their last checkpoint.
A driver that raises ends the parent runs it opened (:func:`closes_parent`). docs/RELIABILITY.md
says what the user sees; tests/test_reliability_resume.py kills real drivers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

KILLED = "killed"  # the child's status tag, beside completed / stopped / failed / oom
KILLED_REASON = "driver lost before Tune checkpointed the trial"
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"  # Tune's saved state; resume reads the newest


@dataclass(frozen=True)
class LostRun:
    """A child run whose trial Tune lost, as it was found (before it was closed)."""

    trial_id: str
    run_id: str
    status: str  # the MLflow status it had: RUNNING (most often) or FINISHED
    status_tag: str  # our status tag it had: running, completed, stopped, failed, oom


@dataclass(frozen=True)
class SavedTrial:
    """A trial as Tune saved it: its status (PENDING, RUNNING, TERMINATED, ERROR...) and result."""

    status: str
    last_result: dict[str, Any]


def saved_trials(experiment_dir: str | Path) -> dict[str, SavedTrial] | None:
    """The trials of the newest saved Tune state in ``experiment_dir`` (the file Tune resumes
    from: newest by name, as Tune picks it), or None where there is none or it is unreadable."""
    files = sorted(Path(experiment_dir).glob(EXPERIMENT_STATE_GLOB))
    if not files:
        return None
    try:
        out = {}
        for trial_json, runtime_json in json.loads(files[-1].read_text())["trial_data"]:
            trial, runtime = json.loads(trial_json), json.loads(runtime_json)
            out[str(trial["trial_id"])] = SavedTrial(
                str(trial["status"]), dict(runtime.get("last_result") or {})
            )
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lost_runs(client: Any, *, experiment_id: str, parent_run_id: str, phase: str,
              known: Iterable[str]) -> list[LostRun]:  # fmt: skip
    """Children of ``parent_run_id`` in ``phase`` whose trial is not in ``known`` and that are not
    closed as killed yet."""
    known = set(known)
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.phase = '{phase}'"
    out = []
    for run in client.search_runs([experiment_id], query, max_results=50_000):
        tags = run.data.tags
        trial_id = tags.get("trial_id")
        if not trial_id or trial_id in known or tags.get("status") == KILLED:
            continue
        out.append(LostRun(trial_id, run.info.run_id, run.info.status, tags.get("status", "")))
    return sorted(out, key=lambda r: r.trial_id)


def close_lost_run(client: Any, lost: LostRun) -> str:
    """Close ``lost`` as KILLED with the reason; returns the reason. A lost trial that had ended
    keeps its metrics, but is no longer one of the study's trials: Tune ran another in its place."""
    reason = KILLED_REASON
    if lost.status != "RUNNING":
        reason += (
            f" (it had ended {lost.status_tag or lost.status.lower()}; Tune ran another trial)"
        )
    client.set_tag(lost.run_id, "status", KILLED)
    client.set_tag(lost.run_id, "killed_reason", reason)
    client.set_terminated(lost.run_id, "KILLED")
    return reason


def close_lost_runs(client: Any, *, experiment_id: str, parent_run_id: str, phase: str,
                    known: Iterable[str]) -> list[LostRun]:  # fmt: skip
    """Close every lost child of this phase as KILLED (see :func:`lost_runs`); returns them."""
    lost = lost_runs(client, experiment_id=experiment_id, parent_run_id=parent_run_id,
                     phase=phase, known=known)  # fmt: skip
    for run in lost:
        reason = close_lost_run(client, run)
        log(f"resume: trial {run.trial_id} closed as killed in MLflow ({reason})")
    return lost


def reconcile_searcher(searcher: Any, experiment_dir: str | Path) -> list[str]:
    """Bring ``searcher`` (a ``FidelityOptunaSearch`` just restored from ``experiment_dir``) in
    line with that folder's saved Tune state: a RUNNING Optuna trial that Tune does not know is
    told FAIL (user attr ``killed_reason``); one that Tune saved as finished is told its result
    (the searcher's state may be older than Tune's). Returns the trial ids told FAIL as lost."""
    from optuna.trial import TrialState

    saved = saved_trials(experiment_dir)
    if saved is None:
        return []
    study = searcher._ot_study
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    lost = []
    for trial_id, ot_trial in list(searcher._ot_trials.items()):
        if (
            trial_id in searcher._completed_trials
            or states.get(ot_trial.number) != TrialState.RUNNING
        ):
            continue
        if trial_id not in saved:
            ot_trial.set_user_attr("killed_reason", KILLED_REASON)
            study.tell(ot_trial, None, state=TrialState.FAIL)
            searcher._completed_trials.add(trial_id)
            lost.append(trial_id)
            log(f"resume: trial {trial_id} told FAIL to Optuna ({KILLED_REASON})")
        elif saved[trial_id].status == "TERMINATED":
            searcher.on_trial_complete(trial_id, saved[trial_id].last_result or None)
    return lost


def reconcile_runs(logger: Any, trials: list[Any]) -> list[LostRun]:
    """Bring the MLflow children of ``logger`` (a ``MlflowLogger``) in line with ``trials`` (all
    the trials of the resumed Tune run, before it starts any): close lost ones as KILLED, finish
    those of trials Tune saved as finished that are still RUNNING."""
    lost = close_lost_runs(logger.client, experiment_id=logger.experiment_id,
                           parent_run_id=logger.parent_run_id,
                           phase=logger.tags.get("phase", "search"),
                           known={t.trial_id for t in trials})  # fmt: skip
    for trial in trials:
        run_id = logger._runs.get(trial.trial_id)
        if trial.status != "TERMINATED" or run_id is None:
            continue
        if logger.client.get_run(run_id).info.status == "RUNNING":
            logger.finish_trial(trial, error=False)
    return lost


def killed_before(ot_trial: Any) -> int:
    """How many trials numbered below ``ot_trial`` were told FAIL as lost: a grid's i-th arm goes
    to the i-th trial that was not lost, so a lost trial's arm still runs."""
    study = getattr(ot_trial, "study", None)
    if study is None:
        return 0
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.number < ot_trial.number and "killed_reason" in t.user_attrs)  # fmt: skip


ENDED = ("TERMINATED", "ERROR")  # Tune's statuses of a trial --resume would not run again


def open_trials(folder: str | Path) -> list[str]:
    """The trials Tune's last saved state in ``folder`` holds not ended (none without a state)."""
    return [t for t, saved in (saved_trials(folder) or {}).items() if saved.status not in ENDED]


def unfinished_trials(grid: Any, num_samples: int, folder: str) -> int:
    """Trials ``--resume`` would still run after a Tune ``fit()`` returned: those not ended in
    Tune's last saved state in ``folder`` (after a SIGINT it holds the running trials as
    RUNNING, while ``fit()`` returns them stopped), and those never started (``num_samples``
    asked). ``grid``'s (a ResultGrid) statuses where no saved state can be read (remote storage)."""
    saved = saved_trials(folder)
    if saved:
        open_ = sum(t.status not in ENDED for t in saved.values())
    else:
        open_ = len(grid) - grid.num_terminated - grid.num_errors
    return open_ + max(0, num_samples - max(len(saved or {}), len(grid)))


def log(message: str) -> None:
    print(f"[peft-tune] {message}", file=sys.stderr, flush=True)


# One list per running decorated driver: the (client, run id) of study runs it opened.
_open_parents: list[list[tuple[Any, str]]] = []


def parent_opened(client: Any, run_id: str) -> None:
    """Note the study's parent run, so :func:`closes_parent` can end it if the driver fails."""
    if _open_parents:
        _open_parents[-1].append((client, run_id))


def closes_parent(launch: Callable[..., T]) -> Callable[..., T]:
    """Decorate the study's driver: a parent run it opened is not left RUNNING when it raises
    (``FAILED``; ``KILLED`` on Ctrl-C); ``--resume`` sets it RUNNING again."""

    @functools.wraps(launch)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        opened: list[tuple[Any, str]] = []
        _open_parents.append(opened)
        try:
            return launch(*args, **kwargs)
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            for client, run_id in opened:
                with contextlib.suppress(Exception):  # the store may be the reason it failed
                    if client.get_run(run_id).info.status == "RUNNING":
                        client.set_terminated(run_id, status)
            raise
        finally:
            _open_parents.pop()

    return wrapper
