"""The monitor's event loop: one selector, callbacks per fd, queued signals.

Threading Model
    One thread. Every fd conmon serves (container output, attach and control
    sockets, the stdin sink, the OOM eventfd) is nonblocking and registered
    here with a callback that receives the ready event mask; a callback
    never blocks. A callback that raises is logged and the loop goes on.

Signals
    Handlers only queue: Python's wakeup fd carries each signal's number
    into a pipe the loop watches, and the loop dispatches it to the handler
    registered for that signal, between callbacks. So SIGCHLD and SIGUSR1
    are handled in loop order, never inside a half-done write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)

EventCallback = Callable[[int], None]
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Loop:
    """A selector whose registrations carry their callbacks."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def watch(self, fd: int, events: int, callback: EventCallback) -> None:
        """Register ``fd`` for ``events`` (0 unregisters), replacing any
        earlier registration of the same fd."""
        try:
            self._selector.get_key(fd)
        except KeyError:
            if events:
                self._selector.register(fd, events, callback)
            return
        if events:
            self._selector.modify(fd, events, callback)
        else:
            self._selector.unregister(fd)

    def unwatch(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def run_once(self, timeout: float | None = None) -> None:
        for key, mask in self._selector.select(timeout):
            # An earlier callback of this round may have unregistered it.
            if key.fd not in self._selector.get_map():
                continue
            callback: EventCallback = key.data
            try:
                callback(mask)
            except Exception:
                # A bug in serving one fd must not cost the exit file: the
                # monitor outliving it matters more than that fd.
                log.exception("callback for fd %d failed", key.fd)

    def close(self) -> None:
        self._selector.close()


class SignalQueue:
    """Signals delivered through the loop; see the module docstring."""

    def __init__(self, loop: Loop, handlers: dict[signal.Signals, Callable[[], None]]) -> None:
        self._handlers = handlers
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in handlers:
            # A Python-level handler must exist for the wakeup byte to be
            # written; the real work happens in _drain.
            signal.signal(signum, _queue_only)
        loop.watch(self._read_fd, READ, self._drain)

    def _drain(self, _mask: int) -> None:
        try:
            numbers = os.read(self._read_fd, 512)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(numbers):  # each signal once per round
            handler = self._handlers.get(signal.Signals(signum))
            if handler is not None:
                handler()


def _queue_only(_signum: int, _frame: object) -> None:
    """The wakeup fd already recorded the signal."""
