"""What every RPC handler gets besides its request, and the generic route
for RPCs whose pool does not implement them yet."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from ...proto import ops
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
