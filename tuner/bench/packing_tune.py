"""The packing benchmark through Ray Tune (``python -m tuner.bench --suite packing --via tune``).

The trials of :mod:`tuner.bench.packing`, run as a study runs them: per level ``n``, one Tune run
of ``n`` identical trials of the product's trainable (:func:`trainables.trainable.tune_trial`)
with ``{"cpu": 1, "gpu": 1/n}`` each and ``max_concurrent_trials=n``, on a loopback-only local
Ray (:func:`tuner.runner.connect_ray`). The data are tokenised once by the parent and put in
Ray's object store once per Ray cluster (``tune.with_parameters``).

Each row has two figures:

- ``aggregate_samples_per_s``, as the process mode computes it: all samples / (last trial's
  training end - first trial's training start). Tune's trials are not released together, so the
  start skew that Ray's scheduling and actor start-up leave is inside this window.
- ``wall_s`` (and ``wall_samples_per_s``): the whole ``Tuner.fit`` of the level, Ray scheduling,
  actor start, model loading, the final test evaluation and checkpointing included.

From each trial's last report: ``trained_at - wall_s`` is when its training began (the process
mode's start, just before ``fit``), ``epoch`` x the training rows its samples (x their real
tokens its tokens), samples / ``train_samples_per_s`` its training seconds; ``best_dev_score``
and, on CUDA, ``peak_mem_mib`` (training plus the final evaluations) as reported.

With ``--mps`` every Ray cluster of the MPS levels is started inside the MPS daemon's block, so
its workers inherit the daemon's pipe, and shut down before the daemon stops.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import Callback

from cluster.mps import daemon as mps_daemon
from search_spaces.errors import ConfigError, one_of
from trainables.fused_pool import start_pool
from trainables.relay import tune_pooled_trial
from trainables.trainable import tune_trial
from tuner.bench.packing import PackingRow, PackingSetup, level_row, trial_config
from tuner.runner import connect_ray

VIA = ("processes", "fused", "tune", "pool")
CUDA_VISIBLE = "CUDA_VISIBLE_DEVICES"


def check_via(via: str) -> str:
    """``--via``, checked before anything starts: one of :data:`VIA`; ``tune`` starts its own
    local Ray, so it refuses to join a cluster named by RAY_ADDRESS."""
    if via not in VIA:
        raise one_of("--via", via, VIA)
    if via in ("tune", "pool") and os.environ.get("RAY_ADDRESS"):
        raise ConfigError(f"--via {via} starts its own local single-GPU Ray; unset "
                          f"RAY_ADDRESS={os.environ['RAY_ADDRESS']!r}")  # fmt: skip
    return via


def measure_tune(
    levels: list[int],
    setup: PackingSetup,
    *,
    data: Any,
    mps: tuple[bool, ...],
    publish: Callable[[PackingRow], None],
    log: Callable[[str], None],
    pooled: bool = False,
) -> None:
    """Every level for each of ``mps`` (False: without MPS, True: under it, where the daemon
    starts), each setting on its own local Ray; ``publish`` gets each row as it is measured.
    ``pooled``: one trial alone as usual (the baseline), then each level's trials in a fused
    pool of ``n`` rows that holds the GPU (:mod:`trainables.fused_pool`)."""
    check_via("pool" if pooled else "tune")
    # Tune runs a trial in its own folder: a relative path breaks
    if Path(setup.backbone).exists():
        setup = replace(setup, backbone=str(Path(setup.backbone).resolve()))
    for under_mps in mps:
        with contextlib.ExitStack() as stack:
            if under_mps and not stack.enter_context(mps_daemon(setup.workdir / "mps")):
                log("packing: no nvidia-cuda-mps-control here, MPS skipped")
                continue
            cpus = stack.enter_context(local_ray(setup.device))
            trainable = tune.with_parameters(tune_trial, data=data)  # one put per cluster
            if pooled:
                log("packing via tune: 1 trial alone (the baseline)")
                publish(run_tune_level(1, setup, data=data, trainable=trainable, cpus=cpus,
                                       mps=under_mps))  # fmt: skip
            for n in levels:
                log(f"packing via {'pool' if pooled else 'tune'}: {n} trial(s)"
                    f"{' under MPS' if under_mps else ''}")  # fmt: skip
                if pooled:
                    publish(run_pool_level(n, setup, data=data, cpus=cpus, mps=under_mps))
                else:
                    publish(run_tune_level(n, setup, data=data, trainable=trainable, cpus=cpus,
                                           mps=under_mps))  # fmt: skip


def tune_config(setup: PackingSetup) -> dict[str, Any]:
    """The packed trial as a Tune trial's config (:func:`tuner.bench.packing.trial_config`)."""
    return {**trial_config(batch_size=setup.batch_size, lr=setup.lr), "backbone": setup.backbone}


def cpus_per_trial(n: int, cluster_cpus: float) -> float:
    """One CPU per trial, or an equal share where the cluster has fewer than ``n``: all ``n``
    trials must fit at once."""
    return min(1.0, cluster_cpus / n)


def run_tune_level(
    n: int,
    setup: PackingSetup,
    *,
    data: Any,
    trainable: Any,
    cpus: float,
    mps: bool,
    via: str = "tune",
) -> PackingRow:
    """One Tune run of ``n`` identical trials, ``n`` at once, each with ``1/n`` of the GPU (via
    ``pool``: none, the pool holds it; ``cpus`` are the cluster's CPUs left for them). ``data``
    is what the trials train on: its rows and tokens turn their reports into figures."""
    running = RunningTrials()
    # Ray counts in 1e-4 units; a pool's trials hold no GPU (the pool does)
    gpus = math.floor(1e4 / n) / 1e4 if setup.device == "cuda" and via != "pool" else 0
    resources = {"cpu": cpus_per_trial(n, cpus), "gpu": gpus}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=tune_config(setup),
        tune_config=tune.TuneConfig(
            num_samples=n, max_concurrent_trials=n,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"{via}-{n}{'-mps' if mps else ''}", storage_path=str(setup.workdir / "tune"),
            verbose=0, callbacks=[running],
            failure_config=tune.FailureConfig(max_failures=0),  # a failed trial counts as failed
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )  # fmt: skip
    began = time.perf_counter()
    grid = tuner.fit()
    wall_s = time.perf_counter() - began
    rows, tokens = len(data.train), int(data.train.lengths.sum())
    results = []
    for result in (grid[i] for i in range(len(grid))):
        figures = None if result.error else trial_figures(result.metrics or {}, rows=rows,
                                                          tokens=tokens)  # fmt: skip
        if figures is not None:
            results.append(figures)
    results.sort(key=lambda r: r["start"])
    return level_row(n, results, shape=setup.shape, peak_flops=setup.peak_flops, mps=mps,
                     via=via, wall_s=wall_s, running_at_once=running.most)  # fmt: skip


def run_pool_level(n: int, setup: PackingSetup, *, data: Any, cpus: float, mps: bool) -> PackingRow:
    """One Tune run of ``n`` identical trials, ``n`` at once, trained in one fused pool of ``n``
    rows that holds the GPU (one CPU); the trials' own processes hold no GPU. The pool starts
    before the timed run (its actor up, nothing built) and ends with it."""
    pool = start_pool(data, slots=n, rank=tune_config(setup)["rank"],
                      gpus=1 if setup.device == "cuda" else 0)  # fmt: skip
    try:
        ray.get(pool.status.remote())
        trainable = tune.with_parameters(tune_pooled_trial, pool=pool)
        return run_tune_level(n, setup, data=data, trainable=trainable, cpus=max(1.0, cpus - 1),
                              mps=mps, via="pool")  # fmt: skip
    finally:
        ray.kill(pool)


class RunningTrials(Callback):
    """Tune callback: the most trials running at once (the packing Ray really ran)."""

    def __init__(self) -> None:
        self.now = self.most = 0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.now -= 1

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.now -= 1


def trial_figures(metrics: dict[str, Any], *, rows: int, tokens: int) -> dict[str, Any] | None:
    """What the aggregate needs from a trial's last Tune result (see the module docstring), in
    the process mode's keys; None unless the trial completed."""
    if metrics.get("status") != "completed" or not metrics.get("train_samples_per_s"):
        return None
    epochs = float(metrics["epoch"])
    samples = round(epochs * rows)
    return {
        "trial_id": metrics.get("trial_id"),
        "start": float(metrics["trained_at"]) - float(metrics["wall_s"]),
        "train_s": samples / float(metrics["train_samples_per_s"]),
        "samples": samples,
        "tokens": round(epochs * tokens),
        "steps": metrics.get("step"),
        "peak_mem_mib": metrics.get("peak_mem_mib"),
        "dev_score": metrics["best_dev_score"],
        "status": metrics["status"],
    }


@contextlib.contextmanager
def local_ray(device: str) -> Iterator[float]:
    """A loopback-only local Ray for the block (:func:`tuner.runner.connect_ray`) that sees one
    GPU on CUDA (the first visible: packing is about one GPU) and none on CPU; shut down at the
    block's end. Yields the cluster's CPUs."""
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process; --via tune starts its own")
    with _env(CUDA_VISIBLE, _visible_devices(device)):  # the raylet and its workers inherit it
        connect_ray(cpus_per_trial=1.0)
    try:
        resources = ray.cluster_resources()
        if device == "cuda" and resources.get("GPU", 0) < 1:
            raise RuntimeError(f"the local Ray sees no GPU ({resources})")
        yield float(resources.get("CPU", 1.0))
    finally:
        ray.shutdown()


def _visible_devices(device: str) -> str:
    if device != "cuda":
        return ""  # Ray would leave a zero-GPU trial the GPU, and run_trial would take it
    current = os.environ.get(CUDA_VISIBLE)
    return current.split(",")[0].strip() if current else "0"


@contextlib.contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
