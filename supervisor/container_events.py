"""Container lifecycle events for GetContainerEvents (the kubelet's evented
PLEG), fanned out from the runtime pool's change feed.

The runtime pool notes each change where it makes it, and conmon's exit
files report every exit (workers/runtime/changes.py). ``runtime.changes_since``
answers each change as a whole CRI event, with the pod's status and its
containers' statuses, so the hub only relays: no handler emits events, and
an event costs no bus call of its own.

The feed is polled while someone subscribes, from the moment the first
subscriber arrives (the runtime pool's few seconds of look-back may add
changes from just before): as with CRI-O, a kubelet that (re)subscribes
relists first, so nothing from before is owed to it. With a status cache
(status_cache.py) it is polled for the daemon's whole life (``keep``): the
cache learns of exits only from it, so each answer drops what it names and
a failed poll flushes the runtime pool's entries.

Delivery: each subscriber has a bounded queue; one that falls
``QUEUE_SIZE`` events behind is dropped (its stream ends with an error)
rather than slowing everyone: the kubelet then falls back to relisting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from ..proto import api_pb2 as api
from ..proto import runtime_ops
from ..proto.errors import BusError, Unavailable
from .opclient import Sender, send
from .status_cache import RUNTIME, StatusCache

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
WATCH_WAIT = 10.0
WATCH_RETRY = 1.0
# Longer than the runtime pool's look-back: keys seen this recently are
# named in each poll so that the look-back does not answer them twice.
LOOKBACK_NS = 10_000_000_000
# Containers whose STOPPED was sent, remembered to send it only once: the
# feed reports it from the exit file and from the op that stopped or
# removed the container, whichever the feed reads first.
STOPPED_MEMORY = 10000


class EventHub:
    def __init__(self, bus: Sender, cache: StatusCache | None = None) -> None:
        self._bus = bus
        self._cache = cache
        self._subscribers: set[asyncio.Queue[api.ContainerEventResponse | None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._stopped: OrderedDict[str, None] = OrderedDict()
        self._keep = False

    def keep(self) -> None:
        """Poll the feed from now until ``stop``, subscribers or not (for
        the status cache). Call before the first read the cache may keep."""
        self._keep = True
        self._start_watching()

    def _start_watching(self) -> None:
        if self._watcher is None:
            # The cursor is taken now, not when the task first runs: reads
            # served from here on must not miss a change made after them.
            self._watcher = asyncio.create_task(self._watch(time.time_ns()),
                                                name="change feed")

    async def stop(self) -> None:
        self._keep = False
        await self._stop_watching()
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def subscribe(self) -> AsyncIterator[api.ContainerEventResponse]:
        queue: asyncio.Queue[api.ContainerEventResponse | None] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        self._start_watching()
        try:
            while True:
                event = await queue.get()
                if event is None:
                    raise Unavailable("the event stream was closed: the daemon is stopping "
                                      "or this client fell too far behind")
                yield event
        finally:
            self._subscribers.discard(queue)
            if not self._subscribers and not self._keep:
                await self._stop_watching()

    async def _stop_watching(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _publish(self, event: api.ContainerEventResponse) -> None:
        if event.container_event_type == api.CONTAINER_STOPPED_EVENT:
            if event.container_id in self._stopped:
                return
            self._stopped[event.container_id] = None
            while len(self._stopped) > STOPPED_MEMORY:
                self._stopped.popitem(last=False)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("Dropping a container event subscriber that fell behind")
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    def _feed_lost(self) -> None:
        # Changes may be reported late now (the next poll resumes from the
        # cursor): nothing kept may outlive them meanwhile.
        if self._cache is not None:
            self._cache.flush(RUNTIME)

    async def _watch(self, cursor: int) -> None:
        recent: dict[str, int] = {}  # keys answered within the look-back
        while True:
            try:
                changes = await send(self._bus, runtime_ops.CHANGES_SINCE,
                                     runtime_ops.ChangesSince(cursor=cursor, wait=WATCH_WAIT,
                                                              recent=sorted(recent)),
                                     time.monotonic() + WATCH_WAIT + 5)
            except BusError as exc:
                log.warning("Change feed: %s", exc.message)
                self._feed_lost()
                await asyncio.sleep(WATCH_RETRY)
                continue
            except Exception:
                # The watcher must outlive any bug in one round.
                log.exception("Change feed failed; retrying")
                self._feed_lost()
                await asyncio.sleep(WATCH_RETRY)
                continue
            cursor = changes.cursor
            for key in changes.keys:
                recent[key] = cursor
            events = [api.ContainerEventResponse.FromString(raw) for raw in changes.events]
            if self._cache is not None:
                self._cache.feed_changed(changes, events)
            for event in events:
                self._publish(event)
            for key, seen in list(recent.items()):
                if seen < cursor - LOOKBACK_NS:
                    del recent[key]
