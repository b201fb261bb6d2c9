"""Progress watchdog for one pull attempt.

Downloads report every chunk to ``progress(n)``. A watchdog thread wakes a
few times per stall window and trips when

- the caller cancelled the request or its deadline passed (``OpContext``),
- no byte arrived for ``stall_timeout`` seconds (``pull_progress_timeout``;
  0 disables this check), or
- ``abort(error)`` was called (a sibling download failed).

Tripping records the reason and shuts down every registered socket, so a
thread blocked in ``recv`` on a stalled registry wakes up at once; the
download code then sees the socket error, asks ``raise_if_tripped()`` and
raises the recorded reason instead of retrying. Sleeps between retries go
through ``sleep()``, which a trip also interrupts.

Progress is logged every tenth of the stall window (or every 10 s when the
check is off), so a slow pull shows in the log before it is cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

from ...proto.errors import BusError, Unavailable
from ..base import OpContext

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, ctx: OpContext, stall_timeout: float, label: str) -> None:
        self._ctx = ctx
        self.stall_timeout = stall_timeout
        self.label = label
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._tripped = threading.Event()
        self._reason: BusError | None = None
        self._last_progress = time.monotonic()
        self.bytes = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watchdog:
        self._thread = threading.Thread(target=self._run, name=f"watchdog {self.label}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Stop the thread without recording a reason: nothing failed.
        with self._lock:
            if self._reason is None:
                self._reason = _Finished("pull attempt finished")
        self._tripped.set()
        if self._thread is not None:
            self._thread.join()

    def progress(self, nbytes: int) -> None:
        """Record that ``nbytes`` just arrived."""
        with self._lock:
            self._last_progress = time.monotonic()
            self.bytes += nbytes

    def abort(self, reason: BusError) -> None:
        """Stop every download of this attempt with ``reason``."""
        self._trip(reason)

    def raise_if_tripped(self) -> None:
        """Raise the recorded reason once tripped (callers use it between steps)."""
        if self._tripped.is_set() and self._reason is not None:
            raise self._reason

    def sleep(self, seconds: float) -> None:
        """Sleep for a retry backoff; return early and raise if tripped."""
        self._tripped.wait(seconds)
        self.raise_if_tripped()

    def watch(self, sock: socket.socket) -> Callable[[], None]:
        """Register ``sock`` so a trip interrupts reads on it; return the undo."""
        with self._lock:
            self._sockets.add(sock)
            tripped = self._tripped.is_set()
        if tripped:
            _shutdown(sock)

        def unwatch() -> None:
            with self._lock:
                self._sockets.discard(sock)
        return unwatch

    def _trip(self, reason: BusError) -> None:
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            sockets = list(self._sockets)
        self._tripped.set()
        for sock in sockets:
            _shutdown(sock)

    def _run(self) -> None:
        window = self.stall_timeout
        tick = min(1.0, window / 4) if window > 0 else 1.0
        report_every = window / 10 if window > 0 else 10.0
        next_report = time.monotonic() + report_every
        while not self._tripped.wait(tick):
            try:
                self._ctx.check()
            except BusError as exc:
                self._trip(exc)
                return
            now = time.monotonic()
            idle = now - self._last_progress
            if window > 0 and idle >= window:
                log.warning("Pull of %s made no progress for %.1fs; cancelling it",
                            self.label, idle)
                self._trip(Unavailable(
                    f"pulling {self.label}: no progress for {idle:.0f}s "
                    f"(pull_progress_timeout is {window:g}s)"))
                return
            if now >= next_report:
                next_report = now + report_every
                log.info("Pulling %s: %d bytes so far", self.label, self.bytes)


class _Finished(BusError):
    """Internal marker: the attempt ended normally (never reaches callers)."""


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
