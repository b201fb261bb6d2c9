"""HTTP/1.1 to registries over urllib3's connection pools, direct or through
the proxy the environment names (proxy.py).

A ``Transport`` holds one urllib3 ``PoolManager`` for direct traffic and
one ``ProxyManager`` per proxy in use. It sends one request and returns
once the response headers are in; retries, redirects and authentication
stay with the caller (registry.py), so urllib3 is always called with
``retries=False, redirect=False``. Any number of threads may share it.

TLS
    Each https origin gets the SSLContext ``TlsPolicy`` builds for it
    (certs.d CA and client certificate; verification relaxed only when
    the caller says the host is insecure). The context is part of urllib3's
    pool key, so a CA dropped into certs.d starts a new pool, and a verified
    and an insecure connection to one host never share a socket. Through a
    proxy an https registry is reached by CONNECT and the same context is
    used inside the tunnel; an http registry gets absolute-form requests.

Connections
    urllib3 keeps up to ``MAX_IDLE_PER_ORIGIN`` idle connections per pool
    and drops one the server closed before reusing it. A response returns
    its connection only once its body was read to the end; ``close()`` on a
    half-read one closes the connection, so no stale bytes reach the next
    request.

Watching sockets
    The caller's ``on_socket`` hook (the pull attempt's watchdog) is handed
    every socket a request uses, fresh or reused, before anything is sent;
    the response undoes it on close. urllib3 makes sockets deep inside its
    pools, so the hook travels in a context variable read by our connection
    classes, on the calling thread.

Timeouts: ``connect_timeout`` bounds connecting, ``read_timeout`` every
blocking read afterwards (a backstop: the watchdog usually acts first).
"""

from __future__ import annotations

import contextvars
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import InsecureRequestWarning, LocationParseError
from urllib3.util import parse_url

from ...proto.errors import FailedPrecondition
from .proxy import Proxy, ProxyEnvironment
from .tls import TlsPolicy

# Idle connections kept per pool; more are closed when returned.
MAX_IDLE_PER_ORIGIN = 8
# Pools kept per manager (one per origin and TLS context).
MAX_POOLS = 32

SocketHook = Callable[[socket.socket], Callable[[], None]]

_ON_SOCKET: contextvars.ContextVar[SocketHook | None] = contextvars.ContextVar(
    "podvisor_image_on_socket", default=None)


class _Watched:
    """Mixin for urllib3 connections: hand the socket to the current hook."""

    sock: Any
    # The undo of the hook that last saw this connection's socket.
    _undo: Callable[[], None] | None = None

    def _watch(self) -> None:
        # A reused connection leaves the previous watcher first (the
        # undo is idempotent: that response may call it again).
        self.unwatch()
        hook = _ON_SOCKET.get()
        # TLS inside an https proxy's tunnel wraps an SSLTransport; the
        # socket to shut down is the one under it.
        sock = getattr(self.sock, "socket", self.sock)
        if hook is not None and isinstance(sock, socket.socket):
            self._undo = hook(sock)

    def unwatch(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()

    def watcher(self) -> Callable[[], None]:
        """The undo for this request, kept by its response: once the
        connection is back in the pool it may belong to another watcher."""
        return self._undo or _nothing


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self._watch()

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:  # reused: connect() will not run
            self._watch()
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self._watch()

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:
            self._watch()
        super().request(*args, **kwargs)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class Response:
    """A response whose connection returns to its pool once fully read."""

    def __init__(self, raw: urllib3.BaseHTTPResponse, unwatch: Callable[[], None]) -> None:
        self.raw = raw
        self._unwatch: Callable[[], None] | None = unwatch
        self.status = raw.status
        self.reason = raw.reason or ""
        self.headers = raw.headers

    def header(self, name: str, default: str = "") -> str:
        value = self.headers.get(name)
        return value if value is not None else default

    def read(self, limit: int) -> bytes:
        """Read the whole body, refusing one larger than ``limit`` bytes.

        A body cut short raises urllib3's ``ProtocolError`` (urllib3
        enforces Content-Length)."""
        length = self.raw.length_remaining
        if length is not None and length > limit:
            self.close()
            raise ValueError(f"response body of {length} bytes exceeds the {limit}-byte limit")
        try:
            data = self.raw.read(limit + 1)
            if len(data) <= limit:
                self.raw.read()  # nothing left: lets urllib3 see the end
        finally:
            self.close()
        if len(data) > limit:
            raise ValueError(f"response body exceeds the {limit}-byte limit")
        return data

    def read_chunk(self, size: int) -> bytes:
        """Up to ``size`` bytes of the body; b"" at its end."""
        return self.raw.read1(size, decode_content=False)

    def close(self) -> None:
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is None:
            return
        unwatch()
        # A body read to the end has already given its connection back;
        # anything else must not be reused.
        if not self.raw.closed:
            self.raw.close()
        self.raw.release_conn()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Transport:
    def __init__(self, tls: TlsPolicy, proxies: ProxyEnvironment | None = None,
                 connect_timeout: float = 30.0, read_timeout: float = 300.0) -> None:
        self._tls = tls
        self._proxies = proxies or ProxyEnvironment()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._pool_kw: dict[str, Any] = {
            "maxsize": MAX_IDLE_PER_ORIGIN, "block": False,
            "timeout": urllib3.Timeout(connect=connect_timeout, read=read_timeout)}
        self._direct = self._prepare(urllib3.PoolManager(MAX_POOLS, **self._pool_kw))
        self._via: dict[Proxy, urllib3.ProxyManager] = {}
        self._lock = threading.Lock()
        # urllib3 logs every new connection at DEBUG; our records say more.
        logging.getLogger("urllib3").setLevel(logging.WARNING)
        # Unverified TLS happens only to hosts registries.conf marks
        # insecure: an operator's decision, not something to warn of per call.
        urllib3.disable_warnings(InsecureRequestWarning)

    @staticmethod
    def _prepare(manager: urllib3.PoolManager) -> urllib3.PoolManager:
        manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return manager

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy a request to ``url`` goes through (None: direct)."""
        parts = _parse(url)
        return self._proxies.proxy_for(parts.scheme or "", parts.host or "", parts.port)

    def request(self, method: str, url: str, headers: Mapping[str, str], *,
                insecure: bool = False, body: bytes | None = None,
                on_socket: SocketHook | None = None) -> Response:
        """Send one request and return once the response headers are in.

        ``insecure`` relaxes TLS verification for the URL's host.
        ``on_socket`` is called with the connection's socket before anything
        is sent, and must return a callable that undoes it; the response
        calls that when it is closed (the watchdog uses this to interrupt
        stalled reads). urllib3's exceptions pass through unchanged.
        """
        parts = _parse(url)
        scheme, host = parts.scheme or "", parts.host or ""
        # certs.d directories are named host[:port] as the URL spells it.
        netloc = urlsplit(url).netloc
        if scheme not in ("http", "https"):
            raise FailedPrecondition(f"unsupported URL scheme {scheme[:20]!r} in {url[:200]}")
        proxy = self._proxies.proxy_for(scheme, host, parts.port)
        manager = self._direct if proxy is None else self._manager(proxy)
        pool_kwargs = None
        if scheme == "https":
            pool_kwargs = {"ssl_context": self._tls.context(netloc, insecure)}
        pool = manager.connection_from_host(host, parts.port, scheme, pool_kwargs=pool_kwargs)
        send = dict(headers)
        target = parts.request_uri
        if proxy is not None and scheme == "http":
            # Forwarded, not tunnelled: the proxy needs the whole URL (the
            # pool adds Proxy-Authorization itself).
            target = url
            send.setdefault("Host", netloc)
        token = _ON_SOCKET.set(on_socket)
        try:
            raw = pool.urlopen(method, target, body=body, headers=send, retries=False,
                               redirect=False, assert_same_host=False, preload_content=False,
                               decode_content=False, release_conn=False)
        finally:
            _ON_SOCKET.reset(token)
        conn = raw.connection
        return Response(raw, conn.watcher() if isinstance(conn, _Watched) else _nothing)

    def _manager(self, proxy: Proxy) -> urllib3.PoolManager:
        with self._lock:
            manager = self._via.get(proxy)
            if manager is None:
                manager = urllib3.ProxyManager(proxy.url, MAX_POOLS,
                                               proxy_headers=proxy.headers(), **self._pool_kw)
                self._prepare(manager)
                self._via[proxy] = manager
            return manager

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            managers = [self._direct, *self._via.values()]
        for manager in managers:
            manager.clear()


def _parse(url: str) -> urllib3.util.Url:
    try:
        return parse_url(url)
    except LocationParseError as exc:
        raise FailedPrecondition(f"invalid registry URL {url[:200]!r}: {exc}") from None


def _nothing() -> None:
    pass
