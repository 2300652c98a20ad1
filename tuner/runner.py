"""The study on Ray Tune: searcher, scheduler, resources, storage, MLflow, console progress."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

from analysis.selection import MAJORITY, PROBE, learning_flag
from tuner.experiment import Experiment
from tuner.tracking import trial_status

TRIAL_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# Our own progress lines replace Tune's tables; checkpointing every evaluation is intended.
DRIVER_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
              "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"}  # fmt: skip


def joins_cluster() -> bool:
    """Whether this driver joins a cluster (RAY_ADDRESS, which ``ray job submit`` sets) rather
    than starting Ray on this machine."""
    return bool(os.environ.get("RAY_ADDRESS"))


def connect_ray(*, cpus_per_trial: float) -> float:
    """Join the cluster named by RAY_ADDRESS (``ray job submit`` sets it), else start one locally.

    Returns the cluster's GPU count. Variables that the job's own runtime env already set are not
    set again: Ray refuses to merge a job's env with a driver's that repeats a key.
    """
    import ray

    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        env = {**TRIAL_ENV, "OMP_NUM_THREADS": str(max(1, int(cpus_per_trial)))}
        env = {k: v for k, v in env.items() if k not in os.environ}
        runtime_env = {"env_vars": env} if env else None
        if joins_cluster():
            ray.init(
                address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, log_to_driver=False
            )
        else:
            with single_machine():
                ray.init(
                    address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                    runtime_env=runtime_env, log_to_driver=False, configure_logging=False,
                )  # fmt: skip
    return float(ray.cluster_resources().get("GPU", 0))


@contextmanager
def single_machine() -> Iterator[None]:
    """A local Ray on Linux binds every interface unless it is told it is a single-machine
    cluster: with Ray's switch off its node IP is 127.0.0.1, so the GCS, raylet and workers
    (started inside this block, inheriting the variable) listen on loopback only."""
    from ray._private import ray_constants

    key, before = (
        ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR,
        os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR),
    )
    flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = flag
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def build_searcher(exp: Experiment, space: Any, *, seed: int) -> Any:
    """Optuna behind Ray Tune: TPE for one objective, NSGA-II for several (+ constraints)."""
    import optuna

    from search_spaces.spaces import startup_trials
    from tuner.searcher import FidelityOptunaSearch, PicklableNSGAIISampler, PicklableTPESampler
    from tuner.space import startup_points

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    # The spaces record each trial's budget constraint on the trial itself (Optuna >= 5 reads it
    # there), a safety net: they only ever sample configurations inside the budget.
    startup = startup_trials(exp.num_samples)
    if exp.multi_objective:
        sampler: Any = PicklableNSGAIISampler(seed=seed, population_size=startup)
    else:
        sampler = PicklableTPESampler(seed=seed, n_startup_trials=startup)
    metrics = [m for m, _ in exp.objectives]
    modes = [mode for _, mode in exp.objectives]
    return FidelityOptunaSearch(
        space=space,
        metric=metrics if exp.multi_objective else metrics[0],
        mode=modes if exp.multi_objective else modes[0],
        sampler=sampler,
        # a budget split's start-up covers every method and LoRA-share bin (stratified)
        points_to_evaluate=startup_points(space, min(startup, exp.num_samples), seed=seed) or None,
    )


def build_scheduler(exp: Experiment, *, max_t: int) -> Any:
    """ASHA on the primary objective, or None (FIFO: every trial runs to the end)."""
    if exp.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration", metric=exp.metric, mode=exp.mode, max_t=max_t,
        grace_period=min(exp.grace_period, max_t), reduction_factor=exp.reduction_factor,
    )  # fmt: skip


class ConsoleProgress(Callback):
    """One line per finished or stopped trial with its key figures."""

    FIGURES = (("dev_score", ".4f"), ("test_score", ".4f"), ("trainable_params", ",d"),
               ("evaluation", "d"), ("wall_s", ".0f"))  # fmt: skip

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    def _line(self, trial: Any, *, error: bool) -> None:
        self.done += 1
        r = trial.last_result or {}
        status = trial_status(r, error=error)
        fields = [f"[{self.done}/{self.total}] {trial.trial_id} {status:9s}",
                  f"{trial.config.get('method', '?'):11s}"]  # fmt: skip
        for key, fmt in self.FIGURES:
            if isinstance(r.get(key), int | float):
                value = int(r[key]) if fmt.endswith("d") else r[key]
                fields.append(f"{key}={value:{fmt}}")
        flag = learning_flag(r.get("dev_score"), r.get(MAJORITY), r.get(PROBE))
        if status == "completed" and flag:  # a stopped trial's score is a low-fidelity one
            fields.append(f"({flag})")
        print("  ".join(fields), file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, error=True)


def summarise(results: Any, exp: Experiment) -> dict[str, Any]:
    """The trials as rows, and the best completed configurations (stopped trials never win)."""
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        error = result.error is not None
        rows.append({
            "trial_id": metrics.get("trial_id"),
            "status": trial_status(metrics, error=error),
            "config": result.config,
            **{k: metrics.get(k) for k in ("dev_score", "test_score", "trainable_params",
                                          "added_params", "fidelity", "evaluation", "wall_s",
                                          MAJORITY, PROBE)},
        })  # fmt: skip
    completed = [r for r in rows if r["status"] == "completed" and r["dev_score"] is not None]
    best = sorted(completed, key=lambda r: r["dev_score"], reverse=exp.mode == "max")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"trials": rows, "best": best[:5], "status_counts": counts}


def print_summary(summary: dict[str, Any]) -> None:
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary["status_counts"].items()))
    print(f"\ntrials: {counts}", file=sys.stderr)
    print("best completed configurations (by dev score):", file=sys.stderr)
    for r in summary["best"]:
        c = r["config"]
        knobs = " ".join(f"{k}={c[k]:.3g}" if isinstance(c[k], float) else f"{k}={c[k]}"
                         for k in ("method", "rank", "placement", "bottleneck", "fusion",
                                   "fusion_layers", "sources", "lr")
                         if c.get(k) not in (None, ""))  # fmt: skip
        flag = learning_flag(r["dev_score"], r.get(MAJORITY), r.get(PROBE))
        print(f"  dev={r['dev_score']:.4f} test={r['test_score'] or float('nan'):.4f} "
              f"trainable={r['trainable_params']:,} {knobs}{f' ({flag})' if flag else ''}",
              file=sys.stderr)  # fmt: skip
