"""The search benchmark, computed from finished studies: how soon a study finds a configuration
within 0.5 points of the best, how many trials it completes per GPU-hour, whether any trial
outside the parameter budget was launched, and each method's best configuration on dev (the same
search run two ways, pooled and not, should choose the same ones).

A study is a Ray Tune experiment folder (``<storage>/<experiment>-<preset>``): one folder per trial
with Tune's ``result.json``, one JSON line per report. Comparing ASHA with no early stopping takes
two studies of the same experiment and seed, one with each scheduler.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from search_spaces.spaces import outside_budget
from tuner.tracking import trial_status

NEAR_BEST = 0.005  # "within 0.5 points" of an accuracy in [0, 1]


@dataclass(frozen=True)
class TrialHistory:
    trial_id: str
    config: dict[str, Any]
    reports: list[dict[str, Any]]  # Tune's results in order; each has "timestamp" (s)
    folder: str = ""  # the trial's folder (``python -m tuner.train --trial FOLDER`` reruns it)

    @property
    def status(self) -> str:
        """completed / stopped (by the scheduler: the last report is below full fidelity) /
        failed / oom, as the study's summary says; Tune's result file holds no "stopped"."""
        return trial_status(self.reports[-1], error=False) if self.reports else "empty"

    @property
    def final_dev_score(self) -> float | None:
        return self.reports[-1].get("dev_score") if self.status == "completed" else None

    @property
    def own_s(self) -> float:
        """Its own time training (Tune's ``time_total_s``), not its wait for a slot."""
        return float(self.reports[-1].get("time_total_s", 0.0))

    @property
    def start(self) -> float:
        first = self.reports[0]
        return float(first["timestamp"]) - float(first.get("time_total_s", 0.0))

    @property
    def end(self) -> float:
        return float(self.reports[-1]["timestamp"])

    def outside_budget(self) -> bool:
        return outside_budget(self.config)


@dataclass(frozen=True)
class SearchRow:
    study: str
    trials: int
    completed: int
    stopped: int
    outside_budget: int
    wall_s: float
    best_dev_score: float | None
    time_to_near_best_s: float | None  # first completed trial within NEAR_BEST of `target`
    trials_per_gpu_hour: float | None  # completed trials (run to full fidelity)
    finished_per_gpu_hour: float | None = None  # completed + stopped: every trial decided
    # each method's completed trial with the best final dev score: its searched knobs and score
    best_by_method: dict[str, str] | None = None
    # the completed trial that trained longest, and for how long: rerun it alone
    # (`python -m tuner.train --trial FOLDER`) for the one-trial time a whole study is held to
    slowest_trial: str | None = None
    slowest_trial_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_study(folder: str | Path) -> list[TrialHistory]:
    """Every trial under a Tune experiment folder (trials without a report are skipped)."""
    trials = []
    for result in sorted(Path(folder).glob("*/result.json")):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if not reports:
            continue
        trial_id = str(reports[-1].get("trial_id", result.parent.name))
        config = dict(reports[-1].get("config", {}))
        trials.append(TrialHistory(trial_id, config, reports, folder=str(result.parent)))
    return trials


def search_row(
    name: str,
    trials: list[TrialHistory],
    *,
    target: float | None,
    gpus: float | None,
    searched: tuple[str, ...] = (),
) -> SearchRow:
    """Figures of one study; ``target`` is the best dev score of all the compared studies;
    ``searched``: the config keys a best configuration is told by."""
    if not trials:
        return SearchRow(name, 0, 0, 0, 0, 0.0, None, None, None, None)
    start = min(t.start for t in trials)
    wall_s = max(t.end for t in trials) - start
    finals = [(t.end - start, t.final_dev_score) for t in trials if t.final_dev_score is not None]
    completed = len(finals)
    stopped = sum(t.status == "stopped" for t in trials)
    done = [t for t in trials if t.final_dev_score is not None]
    slowest = max(done, key=lambda t: t.own_s) if done else None
    return SearchRow(
        study=name, trials=len(trials), completed=completed,
        stopped=stopped,
        outside_budget=sum(t.outside_budget() for t in trials), wall_s=wall_s,
        best_dev_score=max((s for _, s in finals), default=None),
        time_to_near_best_s=time_to_near(finals, target),
        trials_per_gpu_hour=per_gpu_hour(completed, wall_s, gpus),
        finished_per_gpu_hour=per_gpu_hour(completed + stopped, wall_s, gpus),
        best_by_method={m: _told(t, searched) for m, t in best_by_method(trials).items()},
        slowest_trial=slowest.folder if slowest else None,
        slowest_trial_s=slowest.own_s if slowest else None,
    )  # fmt: skip


def best_by_method(trials: list[TrialHistory]) -> dict[str, TrialHistory]:
    """Each method's completed trial with the best final dev score (dev chooses; test is not
    read), methods in name order."""
    best: dict[str, TrialHistory] = {}
    for t in trials:
        method, score = str(t.config.get("method")), t.final_dev_score
        if score is not None and (method not in best or score > best[method].final_dev_score):
            best[method] = t
    return dict(sorted(best.items()))


def searched_keys(trials: list[TrialHistory]) -> tuple[str, ...]:
    """The config keys whose values differ between trials: what a search chose."""
    keys = sorted({k for t in trials for k in t.config})
    values = {k: {json.dumps(t.config.get(k), sort_keys=True) for t in trials} for k in keys}
    return tuple(k for k in keys if len(values[k]) > 1 and k != "method")


def same_best(rows: list[SearchRow]) -> dict[str, str]:
    """Per method, whether every study chose the same configuration on dev ("same: ..." with
    each study's dev score) or what each chose; "none completed" where a study has none."""
    methods = sorted({m for r in rows for m in (r.best_by_method or {})})
    out = {}
    for m in methods:
        chosen = {r.study: (r.best_by_method or {}).get(m) for r in rows}
        split = {study: c.rsplit(" dev ", 1) if c else None for study, c in chosen.items()}
        configs = {parts[0] if parts else None for parts in split.values()}
        if len(configs) == 1 and None not in configs:
            devs = ", ".join(f"{study} {parts[1]}" for study, parts in split.items() if parts)
            out[m] = f"same: {configs.pop()} (dev {devs})"
        else:
            out[m] = "; ".join(f"{study}: {c or 'none completed'}" for study, c in chosen.items())
    return out


def _told(trial: TrialHistory, keys: tuple[str, ...]) -> str:
    config = trial.config
    knobs = " ".join(f"{k}={config[k]:.6g}" if isinstance(config.get(k), float)
                     else f"{k}={config.get(k)}" for k in keys)  # fmt: skip
    return f"{knobs} dev {trial.final_dev_score:.4f}"


def time_to_near(finals: list[tuple[float, float]], target: float | None) -> float | None:
    """The first ``at`` (s) of ``(at, final dev score)`` pairs whose score is within
    ``NEAR_BEST`` of ``target``; None where none is, or there is no target."""
    if target is None:
        return None
    return min((at for at, score in finals if score >= target - NEAR_BEST), default=None)


def best_of(scores: list[float | None]) -> float | None:
    """The best known score: the target every compared search is timed against."""
    return max((s for s in scores if s is not None), default=None)


def per_gpu_hour(trials: int, wall_s: float, gpus: float | None) -> float | None:
    """``trials`` over the GPU-hours of ``wall_s`` seconds on ``gpus`` GPUs (None if unknown)."""
    return trials / (wall_s / 3600 * gpus) if gpus and wall_s > 0 else None


def compare_studies(studies: dict[str, str | Path], *, gpus: float | None) -> list[SearchRow]:
    """One row per named study folder, all measured against the best score any of them found."""
    loaded = {name: load_study(folder) for name, folder in studies.items()}
    target = best_of([t.final_dev_score for ts in loaded.values() for t in ts])
    searched = searched_keys([t for ts in loaded.values() for t in ts])
    return [search_row(name, ts, target=target, gpus=gpus, searched=searched)
            for name, ts in loaded.items()]  # fmt: skip
