"""The Ray Tune trainable of a trial that a fused pool trains (:mod:`trainables.pool_actor`, a Ray
actor on the GPU): it joins the pool, relays the pool's reports to Tune and leaves. It trains
nothing, so it imports neither torch nor the models: a study's relays start in about the time
Ray takes to start a process, not the seconds the training stack takes to import, on every
trial process of every phase (the pool imports that once; tests/test_fused_pool.py checks)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune

from search_spaces.errors import ConfigError
from trainables.checkpoint_files import WEIGHTS

POLL_S = 1.0  # how long one poll of a fused pool waits for a report
WEIGHTS_KEY = "method_weights"  # a final report's trained weights (safetensors bytes)


def tune_pooled_trial(config: dict[str, Any], *, pool: Any) -> None:
    """Run one trial in a fused pool (:mod:`trainables.pool_actor`, a Ray actor on the GPU): join
    it, relay each evaluation it reports to Tune (the last with the trained weights as the
    checkpoint), leave it however this ends (completed, stopped by the scheduler, failed). A pool
    that is gone fails the trial with :class:`PoolLost`."""
    relay(pool, join(pool, config, name="the fused pool"), name="the fused pool")


def tune_placed_trial(config: dict[str, Any], *, router: Any) -> None:
    """Run one trial in the pool the study's router places it on (:class:`tuner.fusing.PoolRouter`:
    one pool per GPU, the least loaded alive), as :func:`tune_pooled_trial` does; each report
    names the pool (``fused_pool``). A pool found gone as the trial joins is marked so and the
    trial placed again; one lost after fails the trial (:class:`PoolLost`: Tune retries it, on a
    pool alive). With no pool alive the trial fails at once."""
    import ray

    while True:
        placed = ray.get(router.place.remote())
        if placed is None:
            raise PoolLost("no fused pool of the study is alive: every one is gone")
        index, pool = placed
        name = f"fused pool {index}"
        try:
            token = join(pool, config, name=name)
            break
        except PoolLost as lost:
            router.lost.remote(index, str(lost))  # calls from one caller run in order
            router.release.remote(index)
        except BaseException:  # refused (cannot fuse), or stopped: its place is free again
            router.release.remote(index)
            raise
    try:
        relay(pool, token, name=name, tags={"fused_pool": index})
    except PoolLost as lost:
        router.lost.remote(index, str(lost))
        raise
    finally:
        router.release.remote(index)


class PoolLost(RuntimeError):
    """The trial's fused pool is gone: its actor died (its GPU or node failed, or it was killed)
    or its training failed. A known trial error: Tune retries the trial per its failure config."""


@contextmanager
def pool_call(name: str) -> Iterator[None]:
    """Calls to a pool: its death, or a failure of its training, become :class:`PoolLost`; a
    refusal of this trial (a :class:`ConfigError`: cannot fuse, dropped for silence) stays."""
    import ray

    try:
        yield
    except ray.exceptions.RayActorError as error:
        raise PoolLost(f"{name} is gone ({type(error).__name__})") from error
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, ConfigError):
            raise
        cause = (str(error.cause).splitlines() or [type(error.cause).__name__])[0]
        raise PoolLost(f"{name} failed: {cause}") from error


def join(pool: Any, config: dict[str, Any], *, name: str) -> int:
    import ray

    with pool_call(name):
        return ray.get(pool.join.remote(config))


def relay(pool: Any, token: int, *, name: str, tags: dict[str, Any] | None = None) -> None:
    """Relay the pool's reports for ``token`` to Tune until its last; leave the pool after."""
    import ray

    try:
        while True:
            with pool_call(name):
                reports = ray.get(pool.poll.remote(token, POLL_S))
            for metrics in reports:
                metrics.update(tags or {})
                weights = metrics.pop(WEIGHTS_KEY, None)
                if weights is None:
                    tune.report(metrics)
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / WEIGHTS).write_bytes(weights)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
                return
    finally:
        pool.leave.remote(token)
