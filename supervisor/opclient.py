"""How RPC handlers reach the workers: ops sent with a named deadline.

A CRI call's handler runs under the deadline the Front took from the
caller (``begin``). Each op it sends picks one of three policies instead of
a number, so which time bounds a step reads at its call site:

- ``CALL``: the call's own deadline, for everything the caller waits for;
- ``CREATE``: the call's deadline plus ``CREATE_GRACE``, for the stages of
  a create, which keeps going after the kubelet gave up so that its retry
  can join it (creates.py);
- ``CLEANUP``: ``CLEANUP_TIMEOUT`` from now, for undoing a failed or
  unclaimed create: the deadline of the call that made it has passed by
  then (that is often why it failed).

The call's deadline lives in a context variable: a create's task is started
inside the call and keeps the call's context, so its stages see the same
deadline after the caller has gone.
"""

from __future__ import annotations

import contextvars
import enum
import time
from typing import Any, Protocol, TypeVar

from ..proto.contract import Op, Record, result_from_wire, to_wire
from ..proto.errors import Internal

CREATE_GRACE = 120.0
CLEANUP_TIMEOUT = 60.0

_call_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("call_deadline")


class Deadline(enum.Enum):
    CALL = "call"
    CREATE = "create"
    CLEANUP = "cleanup"


def begin(deadline: float) -> None:
    """Set the deadline (absolute, time.monotonic()) of the CRI call now
    being served, in this task's context."""
    _call_deadline.set(deadline)


A = TypeVar("A", bound=Record)
R = TypeVar("R", bound=Record)


class Sender(Protocol):
    """What the op client needs of the bus (bus.Bus; a fake one in tests)."""

    async def call(self, op: str, args: dict[str, Any], *, deadline: float) -> Any: ...


class OpClient:
    """Sends ops over the bus under the deadline policies above."""

    def __init__(self, bus: Sender) -> None:
        self._bus = bus

    def deadline(self, policy: Deadline = Deadline.CALL) -> float:
        if policy is Deadline.CLEANUP:
            return time.monotonic() + CLEANUP_TIMEOUT
        try:
            call = _call_deadline.get()
        except LookupError:
            raise Internal("an op was sent outside a CRI call") from None
        return call + CREATE_GRACE if policy is Deadline.CREATE else call

    async def __call__(self, op: Op[A, R], args: A, policy: Deadline = Deadline.CALL) -> R:
        return await send(self._bus, op, args, self.deadline(policy))


async def send(bus: Sender, op: Op[A, R], args: A, deadline: float) -> R:
    """Send ``op`` with an explicit deadline: the op client's, or the own
    deadline of work that serves no CRI call (start-up recovery, the event
    watcher). Both ends check the contract (proto/contract.py)."""
    return result_from_wire(await bus.call(op.name, to_wire(args, op.args), deadline=deadline),
                            op)
