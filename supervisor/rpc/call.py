"""What every RPC handler gets besides its request, the generic route for
RPCs whose pool does not implement them yet, and the bound on the labels
and annotations a pod or container may carry."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from ...proto import ops
from ...proto.errors import ResourceExhausted, shorten
from ..bus import Bus
from ..container_events import EventHub
from ..creates import CreateTable
from ..metrics import Metrics
from ..pool import WorkerPool

M = TypeVar("M", bound=Message)

# Undoing a failed or unclaimed create gets its own time: the deadline of the
# call that created it has passed by then (that is often why it failed).
CLEANUP_TIMEOUT = 60.0


def cleanup_deadline() -> float:
    return time.monotonic() + CLEANUP_TIMEOUT


METADATA_MAX = 512 * 1024
"""UTF-8 bytes of the labels and annotations (keys and values) of one pod or
container. Twice the 256 KiB the API server allows a pod's annotations, so
anything it admits fits with its labels and the kubelet's own annotations;
small enough that 110 pods (the kubelet's default max-pods) at the bound
list in 55 MiB, under the 80 MiB gRPC send limit. Records keep this
metadata, so without a bound one pod could make ListPodSandbox unanswerable."""


def check_metadata(what: str, config: Message) -> None:
    """Refuse a ``config`` whose ``labels`` and ``annotations`` together are
    over METADATA_MAX, naming the largest entry; before anything copies them."""
    size, largest, largest_size = 0, "", -1
    for kind in ("labels", "annotations"):
        for key, value in getattr(config, kind).items():
            entry = _utf8_len(key) + _utf8_len(value)
            size += entry
            if entry > largest_size:
                largest, largest_size = f"{kind[:-1]} {shorten(key, 64)}", entry
    if size > METADATA_MAX:
        raise ResourceExhausted(
            f"{what}: labels and annotations take {size} bytes, over podvisor's limit of "
            f"{METADATA_MAX}; the largest is {largest} ({largest_size} bytes)")


def _utf8_len(text: str) -> int:
    # An ASCII str knows it is one byte per character: a huge value is not
    # encoded (copied) just to be measured.
    return len(text) if text.isascii() else len(text.encode())


@dataclass(frozen=True)
class Call:
    """One CRI call in flight: the bus to reach workers, and its deadline."""

    bus: Bus
    deadline: float          # absolute time.monotonic()
    pools: Mapping[str, WorkerPool]
    creates: CreateTable
    events: EventHub
    metrics: Metrics

    async def op(self, op: str, args: dict[str, Any], key: str | None = None,
                 deadline: float | None = None) -> Any:
        return await self.bus.call(op, args, deadline=deadline or self.deadline, key=key)


def to_args(request: Message) -> dict[str, Any]:
    """A request as the plain dict the bus carries (proto field names)."""
    return json_format.MessageToDict(request, preserving_proto_field_name=True)


def from_result(result: dict[str, Any], response_type: Callable[[], M]) -> M:
    """Build a response from the dict a worker returned (proto field names)."""
    return json_format.ParseDict(result, response_type(), ignore_unknown_fields=False)


async def route(call: Call, rpc: str, request: Message, response_type: Callable[[], M]) -> M:
    """Send ``rpc`` to the pool that owns it as its catalogue op.

    Until that pool implements the op, its worker answers UNIMPLEMENTED,
    which is what the caller gets: never a fake success.
    """
    result = await call.op(ops.rpc_op(rpc).name, to_args(request))
    return from_result(result, response_type)


async def route_stream(call: Call, rpc: str, request: Message,
                       response_type: Callable[[], M]) -> AsyncIterator[M]:
    """``route`` for server-streaming RPCs: the op returns the list to stream."""
    result = await call.op(ops.rpc_op(rpc).name, to_args(request))
    for item in result:
        yield from_result(item, response_type)
