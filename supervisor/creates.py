"""Creates that outlive their caller: the kubelet's retry problem.

When RunPodSandbox or CreateContainer takes longer than the kubelet's
deadline, the kubelet gives up and retries with the same metadata, hence
the same name. Failing that retry with "name is reserved" (the naive
answer) makes the kubelet loop until the orphan is garbage-collected.
Instead, as CRI-O's resourcestore does:

- a create runs as a task that does not die with its caller; its own
  deadline is ``grace`` longer than the caller's;
- a retry with the same name while it runs joins it and gets its result;
- a finished create whose caller has gone waits ``claim_timeout`` for a
  retry to claim it; if none comes, its ``cleanup`` runs, so nothing
  half-claimed stays on the node.

The table is in memory only: after a supervisor restart the pools'
start-up reconcile removes objects still marked "creating".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..proto.errors import DeadlineExceeded

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    task: asyncio.Task[Any]
    cleanup: Callable[[Any], Awaitable[None]]
    waiters: int = 0
    claimed: bool = False
    reaper: asyncio.Task[None] | None = field(default=None, repr=False)


class CreateTable:
    """In-flight and unclaimed creates, keyed by CRI name."""

    def __init__(self, claim_timeout: float = 60.0) -> None:
        self.claim_timeout = claim_timeout
        self._entries: dict[str, _Entry] = {}

    def pending(self, name: str) -> bool:
        return name in self._entries

    async def run(self, name: str, deadline: float,
                  create: Callable[[], Coroutine[Any, Any, Any]],
                  cleanup: Callable[[Any], Awaitable[None]]) -> Any:
        """Run ``create`` for ``name``, or join the one already running."""
        entry = self._entries.get(name)
        if entry is None:
            task = asyncio.create_task(create(), name=f"create {name}")
            entry = self._entries[name] = _Entry(task, cleanup)
            task.add_done_callback(lambda _t: self._finished(name))
        elif entry.reaper is not None:
            entry.reaper.cancel()  # a retry claims a finished, unclaimed create
            entry.reaper = None
        entry.waiters += 1
        try:
            remaining = deadline - time.monotonic()
            result = await asyncio.wait_for(asyncio.shield(entry.task), max(remaining, 0))
        except TimeoutError:
            raise DeadlineExceeded(
                f"creating {name} is taking longer than the deadline; it goes on, and a "
                "retry with the same name will get it") from None
        except BaseException:
            # The create failed (and undid itself): nothing is left to join.
            if entry.task.done() and self._entries.get(name) is entry:
                del self._entries[name]
            raise
        finally:
            entry.waiters -= 1
        # First caller to see the result owns it; the entry is done.
        if self._entries.get(name) is entry:
            entry.claimed = True
            del self._entries[name]
        return result

    def _finished(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None or entry.claimed:
            return
        if entry.task.cancelled() or entry.task.exception() is not None:
            # A failed create cleaned up after itself; nothing to claim.
            if entry.waiters == 0:
                del self._entries[name]
            return
        if entry.waiters == 0:
            log.warning("Create of %s finished after its caller left; keeping it %.0fs "
                        "for a retry", name, self.claim_timeout)
            entry.reaper = asyncio.create_task(self._reap_unclaimed(name, entry))

    async def _reap_unclaimed(self, name: str, entry: _Entry) -> None:
        await asyncio.sleep(self.claim_timeout)
        if self._entries.get(name) is not entry or entry.claimed:
            return
        del self._entries[name]
        log.warning("Nobody claimed %s within %.0fs; removing it", name, self.claim_timeout)
        with contextlib.suppress(Exception):
            await entry.cleanup(entry.task.result())
