"""The op catalogue: every operation the bus carries, the pool that serves
it, and whether it may run twice.

Op names are ``<pool>.<verb>``. The catalogue lists exactly the ops some
pool serves: a worker advertises its ops in READY and the supervisor
refuses one whose list differs (a worker of another build). A CRI RPC that
no pool serves never reaches the bus: the supervisor answers it
UNIMPLEMENTED itself (``UNSERVED_RPCS``).

A ``read_only`` op may be retried once on another worker when the one
holding it dies, and so is an ``idempotent`` stage (creates keyed by id,
stops and removals); any other mutation is retried only when it never
reached its worker (design.md, "The bus").
"""

from __future__ import annotations

from typing import Any

from . import image_ops, net_ops, runtime_ops, storage_ops, stream_ops
from .contract import Op

POOLS = ("image", "storage", "runtime", "net", "stream")

CATALOGUE: dict[str, Op[Any, Any]] = {
    op.name: op for op in (*image_ops.OPS, *storage_ops.OPS, *runtime_ops.OPS, *net_ops.OPS,
                             *stream_ops.OPS)}


def pool_ops(pool: str) -> frozenset[str]:
    """The ops a worker of ``pool`` must serve, no more and no fewer."""
    return frozenset(name for name, op in CATALOGUE.items() if op.pool == pool)


# CRI RPCs podvisor does not serve yet: checkpoint and restore.
UNSERVED_RPCS = frozenset({"CheckpointContainer", "CheckpointPod", "RestorePod"})


def unserved_message(rpc: str) -> str:
    """The UNIMPLEMENTED message for ``rpc``: podvisor's own words, so it is
    never mistaken for gRPC's answer to a method nobody registered."""
    return f"podvisor does not implement {rpc} yet"
