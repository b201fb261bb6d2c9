"""Container lifecycle events for GetContainerEvents (the kubelet's evented
PLEG).

Events come from two places: the RPC handlers publish CREATED, STARTED,
STOPPED and DELETED when a call changes a container, and a watcher task
long-polls the runtime pool for exit files, so a container that exits on
its own is reported STOPPED too. Each event carries the pod sandbox's status
and the statuses of all its containers, as the kubelet's evented PLEG reads
them: the runtime pool builds both (runtime.sandbox_status) and this module
only parses them.

Delivery: each subscriber has a bounded queue; one that falls
``QUEUE_SIZE`` events behind is dropped (its stream ends with an error)
rather than slowing everyone: the kubelet then falls back to relisting,
as it does with CRI-O. With no subscriber, nothing is built.
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
from ..proto.errors import BusError, NotFound, Unavailable
from .opclient import Sender, send

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
WATCH_WAIT = 10.0
WATCH_RETRY = 1.0
LOOKBACK_NS = 10_000_000_000  # longer than the runtime pool's look-back
STATUS_TIMEOUT = 10.0
# Containers whose STOPPED was sent, remembered to send it only once.
STOPPED_MEMORY = 10000



class EventHub:
    def __init__(self, bus: Sender) -> None:
        self._bus = bus
        self._subscribers: set[asyncio.Queue[api.ContainerEventResponse | None]] = set()
        self._pending: asyncio.Queue[tuple[str, int, str | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped: OrderedDict[str, None] = OrderedDict()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch_exits(), name="exit watcher"),
                       asyncio.create_task(self._deliver(), name="event delivery")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def emit(self, container_id: str, kind: int, sandbox_id: str | None = None) -> None:
        """Queue an event; built and delivered in order, off the caller's path.

        A container's STOPPED is sent once, whoever sees the exit first: the
        handler that stopped or removed it, or the exit watcher (checked at
        delivery, which is sequential).
        """
        if self._subscribers:
            self._pending.put_nowait((container_id, kind, sandbox_id))

    async def _deliver(self) -> None:
        while True:
            container_id, kind, sandbox_id = await self._pending.get()
            stopped = kind == api.CONTAINER_STOPPED_EVENT
            if stopped and container_id in self._stopped:
                continue
            try:
                published = await self.publish(container_id, kind, sandbox_id)
            except Exception:
                # Delivery must outlive a bug in one event (a status this
                # build cannot parse): without it every subscriber stalls.
                log.exception("No event for %s", container_id)
                continue
            if published and stopped:
                self._stopped[container_id] = None
                while len(self._stopped) > STOPPED_MEMORY:
                    self._stopped.popitem(last=False)

    async def subscribe(self) -> AsyncIterator[api.ContainerEventResponse]:
        queue: asyncio.Queue[api.ContainerEventResponse | None] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    raise Unavailable("the event stream was closed: the daemon is stopping "
                                      "or this client fell too far behind")
                yield event
        finally:
            self._subscribers.discard(queue)

    async def publish(self, container_id: str, kind: int, sandbox_id: str | None = None) -> bool:
        """Build and fan out one event; False when it could not be built."""
        if not self._subscribers:
            return False
        try:
            event = await self._build(container_id, kind, sandbox_id)
        except BusError as exc:
            log.debug("No event for %s: %s", container_id, exc.message)
            return False
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("Dropping a container event subscriber that fell behind")
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)
        return True


    async def _build(self, container_id: str, kind: int,
                     sandbox_id: str | None) -> api.ContainerEventResponse:
        deadline = time.monotonic() + STATUS_TIMEOUT
        if sandbox_id is None:
            found = await send(
                self._bus, runtime_ops.CONTAINER_LIST, runtime_ops.ContainerListQuery(
                filter=api.ContainerFilter(id=container_id).SerializeToString()), deadline)
            if not found.items:
                raise NotFound(f"container {container_id} not found")
            sandbox_id = api.Container.FromString(found.items[0]).pod_sandbox_id
        event = api.ContainerEventResponse(container_id=container_id,
                                           container_event_type=kind,  # type: ignore[arg-type]
                                           created_at=time.time_ns())
        # A pod removed meanwhile has no status left, nor containers.
        with contextlib.suppress(NotFound):
            pod = await send(self._bus, runtime_ops.SANDBOX_STATUS, runtime_ops.StatusQuery(
                id=sandbox_id, verbose=False), deadline)
            event.pod_sandbox_status.ParseFromString(pod.status)
            event.containers_statuses.extend(
                api.ContainerStatus.FromString(status) for status in pod.containers)
        return event

    async def _watch_exits(self) -> None:
        cursor = time.time_ns()
        recent: dict[str, int] = {}  # reported exits within the look-back
        while True:
            try:
                found = await send(self._bus, runtime_ops.EXITS_SINCE, runtime_ops.ExitsSince(
                    cursor=cursor, wait=WATCH_WAIT, recent=sorted(recent)),
                    time.monotonic() + WATCH_WAIT + 5)
            except BusError as exc:
                log.debug("Exit watcher: %s", exc.message)
                await asyncio.sleep(WATCH_RETRY)
                continue
            except Exception:
                # The watcher must outlive any bug in one round.
                log.exception("Exit watcher failed; retrying")
                await asyncio.sleep(WATCH_RETRY)
                continue
            cursor = found.cursor
            for container_id in found.exits:
                recent[container_id] = cursor
                self.emit(container_id, api.CONTAINER_STOPPED_EVENT)
            for name, seen in list(recent.items()):
                if seen < cursor - LOOKBACK_NS:
                    del recent[name]
