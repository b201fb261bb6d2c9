"""A cleanup stack for multi-step creates (CRI-O's pattern).

Each step that made something pushes how to undo it; on failure the stack
unwinds newest first, logging every entry, so "leaves nothing half-done" is
visible in the log. An undo that fails is logged and the unwinding goes on:
one stuck step must not leave the others undone.

Steps that need nothing of each other run at once through ``both``, which
answers only when both are done, so an unwind never runs beside a step
still under way (whose undo it might miss).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[object]]
A = TypeVar("A")
B = TypeVar("B")


class CleanupStack:
    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: list[tuple[str, Undo]] = []

    def push(self, description: str, undo: Undo) -> None:
        self._entries.append((description, undo))

    async def unwind(self) -> None:
        while self._entries:
            description, undo = self._entries.pop()
            log.info("Cleaning up %s: %s", self.what, description)
            try:
                await undo()
            except Exception as exc:
                log.error("Cleanup of %s failed at %r: %s", self.what, description, exc)


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both results; when one fails, its error once the other is done too,
    so that the cleanup never runs beside a step still under way."""
    one, two = await asyncio.gather(first, second, return_exceptions=True)
    for outcome in (one, two):
        if isinstance(outcome, BaseException):
            raise outcome
    return cast(A, one), cast(B, two)
