"""Health: what every worker is doing, as JSON and as Prometheus metrics.

A tiny HTTP/1.1 server on the loop (loopback by default) answers
``GET /status`` (the JSON ``podvisor status`` prints), ``GET /metrics``
(Prometheus text, or OpenMetrics when the Accept header asks for it) and
``GET /healthz``; gzip-compressed when Accept-Encoding allows it. It reads the pools and buses
directly, and asks the stream pool for its sessions (``stream.stats``), so
the numbers are never staler than the request; a stream pool that does
not answer within ``STREAM_STATS_TIMEOUT`` shows as ``null``, and one not
started yet (on demand, pool.py) as ``{"started": false, "note": ...}``:
it is not asked, since asking would start it. The bound
address is written to ``<runroot>/health.addr`` so ``podvisor status``
finds the daemon even on an ephemeral port.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import psutil
from prometheus_client.exposition import choose_encoder, gzip_accepted

from ..proto import stream_ops
from ..proto.contract import Empty, to_wire
from ..proto.errors import BusError
from .bus import PoolBus
from .metrics import Metrics
from .opclient import Sender, send
from .pool import WorkerPool

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 8192
STREAM_STATS_TIMEOUT = 2.0
STREAM_NOT_STARTED = ("not started (on demand): the first Exec, Attach or PortForward "
                      "starts it")

# The stream pool's answer to stream.stats as JSON, or None if it has none.
StreamStatsSource = Callable[[], Awaitable[dict[str, Any] | None]]


async def stream_stats(bus: Sender) -> dict[str, Any] | None:
    try:
        stats = await send(bus, stream_ops.STATS, Empty(),
                           time.monotonic() + STREAM_STATS_TIMEOUT)
    except BusError:
        return None
    return to_wire(stats, stream_ops.StreamStats)


class WorkerStats:
    """psutil handles kept per pid, so CPU% measures since the last look."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pid: int) -> tuple[int, float]:
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():
                return proc.memory_info().rss, proc.cpu_percent(interval=None)
        except psutil.Error:
            self._procs.pop(pid, None)
            return 0, 0.0

    def forget_except(self, live: set[int]) -> None:
        for pid in set(self._procs) - live:
            del self._procs[pid]


def snapshot(pools: Mapping[str, WorkerPool], buses: Mapping[str, PoolBus],
             stats: WorkerStats) -> dict[str, Any]:
    """The status document: one entry per worker slot, plus per-pool totals."""
    now = time.monotonic()
    workers = []
    live: set[int] = set()
    for name, pool in pools.items():
        inflight = buses[name].inflight_by_pid()
        for slot in pool.slots:
            rss, cpu = stats.sample(slot.pid) if slot.pid else (0, 0.0)
            if slot.pid:
                live.add(slot.pid)
            workers.append({
                "pool": name, "index": slot.index, "pid": slot.pid,
                "state": slot.state.value,
                "uptime": round(now - slot.started_at, 3) if slot.pid else 0.0,
                "restarts": slot.restarts, "inflight": inflight.get(slot.pid or -1, 0),
                "rss": rss, "cpu_percent": cpu, "last_exit": slot.last_exit,
            })
    stats.forget_except(live)
    return {
        "pid": os.getpid(),
        "workers": workers,
        "pools": {name: p.summary() for name, p in pools.items()},
    }


class HealthServer:
    def __init__(self, host: str, port: int, pools: Mapping[str, WorkerPool],
                 buses: Mapping[str, PoolBus], metrics: Metrics) -> None:
        self.host = host
        self.port = port
        self._pools = pools
        self._buses = buses
        self._metrics = metrics
        self._stats = WorkerStats()
        self._server: asyncio.Server | None = None
        # Set once the bus exists (daemon.py); the health endpoint starts first.
        self.stream_stats: StreamStatsSource | None = None

    async def start(self, addr_file: str) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        host, port = self._server.sockets[0].getsockname()[:2]
        tmp = f"{addr_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{host}:{port}\n")
        os.replace(tmp, addr_file)
        log.info("Health and metrics on http://%s:%d/status and /metrics", host, port)
        return host, port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            # The headers a client negotiates with; the body of a GET is ignored.
            headers: dict[bytes, bytes] = {}
            while (header := await asyncio.wait_for(reader.readline(), 5.0)) not in (
                    b"\r\n", b"\n", b""):
                if len(header) > MAX_REQUEST_LINE:
                    break
                name, _, value = header.partition(b":")
                headers[name.strip().lower()] = value.strip()
            status, ctype, body = await self._route(line, headers)
            extra = b""
            if status == b"200 OK" and gzip_accepted(
                    headers.get(b"accept-encoding", b"").decode("latin-1")):
                body, extra = gzip.compress(body), b"Content-Encoding: gzip\r\n"
            writer.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s"
                         b"Connection: close\r\n\r\n" % (status, ctype.encode(), len(body),
                                                          extra))
            writer.write(body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _streaming(self) -> dict[str, Any] | None:
        pool = self._pools.get("stream")
        doc: dict[str, Any] | None
        if pool is not None and pool.not_started():
            doc = {"started": False, "note": STREAM_NOT_STARTED}
        elif self.stream_stats is not None:
            doc = await self.stream_stats()
        else:
            doc = None
        self._metrics.observe_streaming(doc)
        return doc

    async def _route(self, line: bytes, headers: dict[bytes, bytes]
                     ) -> tuple[bytes, str, bytes]:
        parts = line.split()
        if len(parts) < 2 or parts[0] != b"GET":
            return b"405 Method Not Allowed", "text/plain", b"only GET\n"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/status":
            doc = snapshot(self._pools, self._buses, self._stats)
            doc["streaming"] = await self._streaming()
            return b"200 OK", "application/json", json.dumps(doc).encode()
        if path == b"/metrics":
            await self._streaming()
            # The text format or OpenMetrics, by Accept, as prometheus_client's
            # own exporter chooses.
            encode, ctype = choose_encoder(headers.get(b"accept", b"").decode("latin-1"))
            return b"200 OK", ctype, encode(self._metrics.registry)
        if path == b"/healthz":
            return b"200 OK", "text/plain", b"ok\n"
        return b"404 Not Found", "text/plain", b"not found\n"
