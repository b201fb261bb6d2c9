"""OpThreads: a worker's op threads, started on demand and ended when idle.

Why not ``concurrent.futures.ThreadPoolExecutor``: its threads never end.
A worker serves up to ``max_inflight`` ops at once, so one burst of pods
(50 at once) left it ``max_inflight`` threads for the rest of its life,
each with the stack pages and Python thread state it touched. This pool
starts a thread only when no idle one is left, up to ``max_threads``, and
a thread that gets no work for ``idle_exit`` seconds ends.

Invariants, kept under ``_lock``:
- An idle thread waits on a slot of its own, on the ``_idle`` stack. The
  next op goes to the thread that became idle last, so under a light load
  (the change feed's long poll, a status read now and then) the same few
  threads serve everything and the rest reach ``idle_exit`` and end. A
  shared queue would hand ops round the threads and keep them all alive.
- A thread puts its slot back before its caller hears the op's outcome,
  so the caller's next op finds it idle and starts no thread
  (ThreadPoolExecutor's race: it counts a thread idle only afterwards).
- When every thread is busy and ``max_threads`` run, ops wait in
  ``_backlog``; a thread that finishes takes the oldest before going idle.

``shutdown`` ends idle threads at once and busy ones after their op. The
threads are not daemons: the interpreter's exit waits for ops still
running, as it did with ThreadPoolExecutor.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")
# Seconds an idle thread waits for an op before it ends.
IDLE_EXIT = 10.0


class _Item:
    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(self, future: Future[Any], fn: Callable[..., Any],
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs


class _Slot:
    """Where one idle thread waits; ``item`` None with ``ready`` set: end."""

    __slots__ = ("item", "ready")

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.item: _Item | None = None


class OpThreads(Executor):
    """An executor whose threads come and go with the load (module docstring)."""

    def __init__(self, max_threads: int, name: str, idle_exit: float = IDLE_EXIT) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self._max = max_threads
        self._name = name
        self._idle_exit = idle_exit
        self._lock = threading.Lock()
        self._idle: list[_Slot] = []
        self._backlog: collections.deque[_Item] = collections.deque()
        self._alive: set[threading.Thread] = set()
        self._closed = False
        self._serial = itertools.count(1)

    @property
    def threads(self) -> int:
        """Threads alive now, busy or idle."""
        with self._lock:
            return len(self._alive)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        item = _Item(future, fn, args, kwargs)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name}: cannot run ops after shutdown")
            if self._idle:
                slot = self._idle.pop()  # the thread idle for the shortest time
                slot.item = item
                slot.ready.set()
            elif len(self._alive) < self._max:
                thread = threading.Thread(target=self._serve, args=(item,), daemon=False,
                                          name=f"{self._name}_{next(self._serial)}")
                self._alive.add(thread)
                try:
                    thread.start()
                except RuntimeError:  # no thread to be had: not counted as one
                    self._alive.discard(thread)
                    raise
            else:
                self._backlog.append(item)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._alive)
            if cancel_futures:
                for item in self._backlog:
                    item.future.cancel()
                self._backlog.clear()
            for slot in self._idle:
                slot.ready.set()  # item None: end
            self._idle.clear()
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _serve(self, first: _Item) -> None:
        slot = _Slot()
        item: _Item | None = first
        while item is not None:
            self._run(item, slot)
            item = None  # the op's arguments and result must not outlive it here
            if not slot.ready.wait(self._idle_exit):
                with self._lock:
                    if slot in self._idle:  # unclaimed: end this thread
                        self._idle.remove(slot)
                        # In the same hold: a submit right after must find
                        # room to start a thread, not leave its op in the
                        # backlog of a thread about to end.
                        self._alive.discard(threading.current_thread())
                        return
                # Claimed just as the wait timed out: the item is there.
            item, slot.item = slot.item, None
            slot.ready.clear()
        with self._lock:
            self._alive.discard(threading.current_thread())

    def _run(self, item: _Item, slot: _Slot) -> None:
        future = item.future
        if not future.set_running_or_notify_cancel():
            self._rest(slot)
            return
        try:
            result = item.fn(*item.args, **item.kwargs)
        except BaseException as exc:  # the future carries it to the caller
            self._rest(slot)
            future.set_exception(exc)
        else:
            self._rest(slot)
            future.set_result(result)

    def _rest(self, slot: _Slot) -> None:
        """Idle again: take the oldest waiting op, or put the slot back."""
        with self._lock:
            if self._backlog:
                slot.item = self._backlog.popleft()
                slot.ready.set()
            elif self._closed:
                slot.ready.set()  # item None: end
            else:
                self._idle.append(slot)
