"""A cleanup stack for multi-step creates (CRI-O's pattern).

Each step that made something pushes how to undo it; on failure the stack
unwinds newest first, logging every entry, so "leaves nothing half-done" is
visible in the log. An undo that fails is logged and the unwinding goes on:
one stuck step must not leave the others undone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[object]]


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
