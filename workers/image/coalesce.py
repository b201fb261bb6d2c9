"""In-process coalescing of identical concurrent calls (pulls).

The first caller for a key runs the work; callers arriving meanwhile wait
for its outcome and share it, result or error (CRI-O's
``pullOperationsInProgress``). A joiner keeps honouring its own deadline
and cancellation while it waits. If the owner stopped because *its* caller
went away (Cancelled, DeadlineExceeded), a joiner does not inherit that:
it takes over and runs the work itself.

Across worker processes the same effect comes from the per-reference flock
and the "already pulled" check in pull.py; this only spares a worker from
polling a lock its own threads hold.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from ...proto.errors import Cancelled, DeadlineExceeded
from ..base import OpContext

log = logging.getLogger(__name__)

T = TypeVar("T")

_POLL = 0.25


class Coalescer(Generic[T]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, Future[T]] = {}

    def run(self, key: Hashable, ctx: OpContext, work: Callable[[], T]) -> T:
        while True:
            with self._lock:
                future = self._inflight.get(key)
                owner = future is None
                if future is None:
                    future = self._inflight[key] = Future()
            if owner:
                return self._own(key, future, work)
            log.info("Joining a pull already in progress for %s", key)
            try:
                return self._join(future, ctx)
            except (Cancelled, DeadlineExceeded):
                ctx.check()  # ours, not the owner's? then take over
                continue

    def _own(self, key: Hashable, future: Future[T], work: Callable[[], T]) -> T:
        try:
            result = work()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    @staticmethod
    def _join(future: Future[T], ctx: OpContext) -> T:
        while True:
            ctx.check()
            try:
                return future.result(timeout=_POLL)
            except FutureTimeout:
                continue
