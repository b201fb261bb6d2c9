"""HTTP/1.1 with keep-alive connection reuse, over ``http.client``.

A ``Transport`` keeps idle connections per origin (scheme, host[:port]) and
hands each request a connection of its own: connections are never shared by
two requests at once, so any number of threads may use one transport.

Invariants:
- A connection goes back to the idle pool only after its response body was
  read to the end and the server did not ask to close; anything else closes
  it. A half-read body can therefore never leak into the next request.
- A request on a *reused* connection that fails before any response byte
  (the server closed an idle keep-alive connection) is sent once more on a
  fresh connection; that is not counted as a retry by callers.
- Timeouts: ``connect_timeout`` bounds connecting, ``read_timeout`` every
  blocking read afterwards (a backstop: the watchdog usually acts first).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from .tls import TlsPolicy

# Idle connections kept per origin; more are closed when returned.
MAX_IDLE_PER_ORIGIN = 8


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        return cls(parts.scheme, parts.netloc)


SocketHook = Callable[[socket.socket], Callable[[], None]]


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed by the server meanwhile."""


class Response:
    """A response whose connection returns to the pool once fully read."""

    def __init__(self, transport: Transport, origin: Origin, insecure: bool,
                 conn: http.client.HTTPConnection, raw: http.client.HTTPResponse,
                 unwatch: Callable[[], None] | None) -> None:
        self._transport = transport
        self._origin = origin
        self._insecure = insecure
        self._conn: http.client.HTTPConnection | None = conn
        self._unwatch = unwatch
        self.raw = raw
        self.status = raw.status
        self.reason = raw.reason
        self.headers = raw.headers

    def header(self, name: str, default: str = "") -> str:
        value = self.headers.get(name)
        return value if value is not None else default

    def read(self, limit: int) -> bytes:
        """Read the whole body, refusing one larger than ``limit`` bytes."""
        length = self.raw.length
        if length is not None and length > limit:
            self.close()
            raise ValueError(f"response body of {length} bytes exceeds the {limit}-byte limit")
        try:
            data = self.raw.read(limit + 1)
            missing = self.missing
        finally:
            self.close()
        if len(data) > limit:
            raise ValueError(f"response body exceeds the {limit}-byte limit")
        if missing:
            raise http.client.IncompleteRead(data, missing)
        return data

    @property
    def missing(self) -> int:
        """Bytes the Content-Length promised that have not arrived."""
        # http.client's readinto returns 0 at a premature EOF instead of
        # raising, leaving ``length`` at what is still owed.
        return self.raw.length or 0

    def readinto(self, buffer: memoryview) -> int:
        return self.raw.readinto(buffer)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._unwatch is not None:
            self._unwatch()
        if self.raw.isclosed() and not self.raw.will_close and not self.missing:
            self._transport._release(self._origin, self._insecure, conn)
        else:
            self.raw.close()
            conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Transport:
    def __init__(self, tls: TlsPolicy, connect_timeout: float = 30.0,
                 read_timeout: float = 300.0) -> None:
        self._tls = tls
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[tuple[Origin, bool], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def request(self, method: str, url: str, headers: Mapping[str, str], *,
                insecure: bool = False, body: bytes | None = None,
                on_socket: SocketHook | None = None) -> Response:
        """Send one request and return once the response headers are in.

        ``insecure`` relaxes TLS verification for the URL's host.
        ``on_socket`` is called with the connection's socket before anything
        is sent, and must return a callable that undoes it; the response
        calls that when it is closed (the watchdog uses this to interrupt
        stalled reads).
        """
        origin = Origin.of(url)
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        conn, reused = self._acquire(origin, insecure)
        try:
            return self._send(conn, reused, origin, insecure, method, target, headers, body,
                              on_socket)
        except _StaleConnection:
            conn = self._connect(origin, insecure)
            return self._send(conn, False, origin, insecure, method, target, headers, body,
                              on_socket)

    def _send(self, conn: http.client.HTTPConnection, reused: bool, origin: Origin,
              insecure: bool, method: str, target: str, headers: Mapping[str, str],
              body: bytes | None, on_socket: SocketHook | None) -> Response:
        unwatch = None
        try:
            if conn.sock is None:
                conn.connect()
            sock = conn.sock
            assert sock is not None
            sock.settimeout(self.read_timeout)
            if on_socket is not None:
                unwatch = on_socket(sock)
            conn.request(method, target, body=body, headers=dict(headers))
            raw = conn.getresponse()
        except BaseException as exc:
            if unwatch is not None:
                unwatch()
            conn.close()
            stale = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
            if reused and isinstance(exc, stale):
                raise _StaleConnection from exc
            raise
        return Response(self, origin, insecure, conn, raw, unwatch)

    def _acquire(self, origin: Origin, insecure: bool) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get((origin, insecure))
            if idle:
                return idle.pop(), True
        return self._connect(origin, insecure), False

    def _connect(self, origin: Origin, insecure: bool) -> http.client.HTTPConnection:
        if origin.scheme == "https":
            return http.client.HTTPSConnection(
                origin.host, timeout=self.connect_timeout,
                context=self._tls.context(origin.host, insecure))
        if origin.scheme == "http":
            return http.client.HTTPConnection(origin.host, timeout=self.connect_timeout)
        raise ValueError(f"unsupported URL scheme {origin.scheme!r}")

    def _release(self, origin: Origin, insecure: bool, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault((origin, insecure), [])
            if len(idle) < MAX_IDLE_PER_ORIGIN:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            pools, self._idle = list(self._idle.values()), {}
        for idle in pools:
            for conn in idle:
                with contextlib.suppress(OSError):
                    conn.close()
