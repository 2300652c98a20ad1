"""The fused pool as a Ray actor, light to import: Ray imports an actor class's module in every
process that gets a handle to the actor (each relay of :mod:`trainables.relay`, the router of
:mod:`tuner.fusing`), so the class those processes see wraps the pool
(:class:`trainables.fused.pool.FusedPool`, torch and the models) built in the actor's own
process."""

from __future__ import annotations

from typing import Any

from trainables.relay import POLL_S


class PoolActor:
    """A fused pool as a Ray actor (threaded: each trial's poll waits in its own thread): the
    calls a relay and the router make, each the pool's own. Measured on this project's 2-core
    machine: with ``ray.remote(FusedPool)``, a relay's first call returning the pool's handle took
    ~4 s, importing torch and the models in the relay."""

    def __init__(self, data: Any, **kwargs: Any) -> None:
        from trainables.fused.pool import FusedPool

        self._pool = FusedPool(data, **kwargs)

    def join(self, config: dict[str, Any]) -> int:
        return self._pool.join(config)

    def poll(self, token: int, wait_s: float = POLL_S) -> list[dict[str, Any]]:
        return self._pool.poll(token, wait_s)

    def expect(self, trials: int) -> None:
        self._pool.expect(trials)

    def leave(self, token: int) -> None:
        self._pool.leave(token)

    def close(self) -> None:
        self._pool.close()

    def status(self) -> dict[str, Any]:
        return self._pool.status()


def start_pool(
    data: Any,
    *,
    slots: int,
    rank: int = 16,
    placement: str | None = None,
    gpus: float = 1.0,
    lease_s: float | None = None,
) -> Any:
    """A pool actor holding ``gpus`` of a GPU (0: trains on the host), for
    :func:`trainables.relay.tune_pooled_trial`; ``lease_s``: the pool's default when None."""
    import ray

    actor = ray.remote(PoolActor).options(
        num_cpus=1, num_gpus=gpus, max_concurrency=max(16, 4 * slots)
    )
    lease = {} if lease_s is None else {"lease_s": lease_s}
    return actor.remote(data, slots=slots, rank=rank, placement=placement,
                        device="cuda" if gpus else "cpu", **lease)  # fmt: skip
