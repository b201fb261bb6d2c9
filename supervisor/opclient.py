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
from typing import Any, Protocol, TypeVar, overload

from ..proto.contract import Op, Record, Untyped, from_wire, result_from_wire, to_wire
from ..proto.errors import Internal
from ..proto.ops import CATALOGUE

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

    @overload
    async def __call__(self, op: Op[A, R], args: A, policy: Deadline = ...) -> R: ...

    @overload
    async def __call__(self, op: str, args: dict[str, Any], policy: Deadline = ...) -> Any: ...

    async def __call__(self, op: Op[Any, Any] | str, args: Any,
                       policy: Deadline = Deadline.CALL) -> Any:
        if isinstance(op, Op):
            wire = to_wire(args, op.args)
            return result_from_wire(
                await self._bus.call(op.name, wire, deadline=self.deadline(policy)), op)
        return await self._legacy(op, args, policy)

    async def _legacy(self, name: str, args: dict[str, Any], policy: Deadline) -> Any:
        # A caller not moved to typed ops yet: its map is still checked
        # against the contract when the op has one.
        op = CATALOGUE[name]
        if op.args is Untyped:
            return await self._bus.call(name, args, deadline=self.deadline(policy))
        typed = await self(op, from_wire(args, op.args, f"{name} arguments"), policy)
        return to_wire(typed, op.result)
