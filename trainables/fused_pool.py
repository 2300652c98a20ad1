"""The fused pool's public names where callers (``tuner.fusing``, ``tuner.bench``, the pooled
trainable) import them from: the pool lives in :mod:`trainables.fused.pool`."""

from trainables.fused.pool import (
    GATHER_S,
    LEASE_S,
    WEIGHTS_KEY,
    FusedPool,
    build_member,
)
from trainables.pool_actor import start_pool

__all__ = ["GATHER_S", "LEASE_S", "WEIGHTS_KEY", "FusedPool", "build_member", "start_pool"]
