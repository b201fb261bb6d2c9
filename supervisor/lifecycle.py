"""Lifecycle events of workers, published on a ZeroMQ PUB socket.

Topics are ``worker.<pool>.<event>`` (circus's ``watcher.<name>.<topic>``)
with event one of spawn, ready, reap, backoff, fatal, kill; the body is a
JSON object (pool, index, pid, state, restarts, plus the event's own
fields). ``podvisor status --watch``-style tools and tests subscribe at
``ipc://<runroot>/bus/events.sock`` instead of scraping logs. Publishing
never blocks: a slow subscriber loses messages, not the supervisor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import zmq

from .pool import WorkerSlot

log = logging.getLogger(__name__)


class EventPublisher:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.endpoint = endpoint
        self._sock = ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 1000)
        path = endpoint.removeprefix("ipc://")
        if os.path.exists(path):
            os.unlink(path)
        old = os.umask(0o077)
        try:
            self._sock.bind(endpoint)
        finally:
            os.umask(old)

    def publish(self, event: str, slot: WorkerSlot, data: dict[str, Any]) -> None:
        body = {"event": event, "pool": slot.pool, "index": slot.index, "pid": slot.pid,
                "state": slot.state.value, "restarts": slot.restarts, **data}
        # No room means a slow subscriber: drop rather than block the loop.
        with contextlib.suppress(zmq.Again):
            self._sock.send_multipart(
                [f"worker.{slot.pool}.{event}".encode(), json.dumps(body).encode()],
                flags=zmq.NOBLOCK)

    def close(self) -> None:
        self._sock.close(linger=0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.endpoint.removeprefix("ipc://"))
