"""A fake bus for orchestration tests: the ``Sender`` an ``OpClient`` or an
``EventHub`` talks to, answering from handlers instead of worker processes.

What it keeps of the real bus (supervisor/bus.py):

- an op missing from the catalogue (proto/ops.py) is refused with INTERNAL,
  as the router does, so a misspelt op fails the test that sends it;
- a reply is awaited until the request's ``deadline`` at most: a handler
  still running then is cancelled and the caller gets DEADLINE_EXCEEDED;
  a request sent with its deadline already past gets it at once;
- a handler sees a copy of the arguments and the caller a copy of the
  answer, as across a process boundary.

What it adds: every request is logged (``sent``), failed or not, with the
deadline it carried and when it was sent, so a test can assert the order
of the ops and which deadline policy applied. An op with no handler
answers UNIMPLEMENTED, so a test states every op it expects to be sent.

A handler is a plain function or a coroutine function taking the args
and returning the result, or raising a ``BusError`` as a worker op does.
A coroutine handler can wait on an ``asyncio.Event`` to hold an op until
the test lets it go; ``delay`` sleeps before any handler runs.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podvisor.proto.errors import BusError, DeadlineExceeded, Internal, Unimplemented
from podvisor.proto.ops import CATALOGUE

# args -> result, or -> an awaitable of the result; may raise a BusError.
Handler = Callable[[dict[str, Any]], Any]

WAIT_INTERVAL = 0.001


@dataclass(frozen=True)
class Sent:
    """One request as the fake bus received it."""

    op: str
    args: dict[str, Any]
    deadline: float  # absolute, time.monotonic()
    key: str | None
    at: float  # time.monotonic() when it was sent


@dataclass(frozen=True)
class _Route:
    handler: Handler
    delay: float


class FakeBus:
    """Answers ops from per-op handlers and logs every request."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._routes: dict[str, _Route] = {}

    def on(self, op: str, handler: Handler, *, delay: float = 0.0) -> None:
        """Answer ``op`` with ``handler(args)`` (awaited if it is awaitable)."""
        if op not in CATALOGUE:
            raise ValueError(f"{op} is not in the op catalogue")
        self._routes[op] = _Route(handler, delay)

    def returns(self, op: str, result: Any, *, delay: float = 0.0) -> None:
        """Answer ``op`` with ``result`` every time."""
        self.on(op, lambda _args: result, delay=delay)

    def raises(self, op: str, error: BusError, *, delay: float = 0.0) -> None:
        """Fail ``op`` with ``error`` every time."""
        def fail(_args: dict[str, Any]) -> Any:
            raise error
        self.on(op, fail, delay=delay)

    async def call(self, op: str, args: dict[str, Any], *, deadline: float,
                   key: str | None = None) -> Any:
        now = time.monotonic()
        self.sent.append(Sent(op, copy.deepcopy(args), deadline, key, now))
        if op not in CATALOGUE:
            raise Internal(f"unknown op {op}")
        route = self._routes.get(op)
        if route is None:
            raise Unimplemented(f"the fake bus has no handler for {op}")
        try:
            return await asyncio.wait_for(self._answer(route, args), max(deadline - now, 0))
        except TimeoutError:
            raise DeadlineExceeded(f"{op} did not finish before its deadline") from None

    async def _answer(self, route: _Route, args: dict[str, Any]) -> Any:
        if route.delay:
            await asyncio.sleep(route.delay)
        answer = route.handler(copy.deepcopy(args))
        if inspect.isawaitable(answer):
            answer = await answer
        return copy.deepcopy(answer)

    def ops(self) -> list[str]:
        """The names of the ops sent so far, in order."""
        return [sent.op for sent in self.sent]

    def sent_to(self, op: str) -> list[Sent]:
        """The requests sent so far for ``op``, in order."""
        return [sent for sent in self.sent if sent.op == op]

    async def wait_sent(self, op: str, count: int = 1, timeout: float = 1.0) -> Sent:
        """Wait until ``op`` was sent ``count`` times; return the last of those.

        Raises AssertionError naming the ops sent so far when ``timeout``
        passes first.
        """
        until = time.monotonic() + timeout
        while len(found := self.sent_to(op)) < count:
            if time.monotonic() >= until:
                raise AssertionError(f"{op} sent {len(found)} times, not {count}, within "
                                     f"{timeout}s; sent: {self.ops()}")
            await asyncio.sleep(WAIT_INTERVAL)
        return found[count - 1]
