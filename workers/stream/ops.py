"""Ops of the stream pool: the bus face of the streaming server.

    stream.issue   keep a session's plan behind a new token; answer its URL
    stream.stats   tokens outstanding and sessions by kind (status, metrics)

``StreamService`` is built once per worker from its settings; its server
starts before the worker says READY (``start``), on the worker's loop,
so a port that cannot be bound is a failed start the pool retries.

The port
    With ``port = 0`` the first start takes a free port and writes it to
    ``<runroot>/stream.port``; a restarted worker binds the same one again
    if it is still free, so a URL the kubelet is about to use still names
    the server (its token died with the old worker, and the kubelet's
    retry asks for a new one).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import ssl
from collections.abc import Mapping
from typing import Any

from ...proto.contract import Empty
from ...proto.errors import Unavailable
from ...proto.stream_ops import ISSUE, KINDS, STATS, Issued, Session, StreamStats
from ..base import OpContext, OpTable, Served, serve
from .server import StreamServer
from .tokens import Tokens

log = logging.getLogger(__name__)

PORT_FILE = "stream.port"
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


class StreamService:
    def __init__(self, settings: Mapping[str, Any]) -> None:
        stream = settings["stream"]
        self._address: str = stream["address"]
        self._port: int = int(stream["port"])
        self._cert: str = stream["tls_cert"]
        self._key: str = stream["tls_key"]
        self._port_file = os.path.join(settings["runroot"], PORT_FILE)
        self._server = StreamServer(Tokens(float(stream["token_ttl"]), int(stream["max_tokens"])),
                                    float(stream["stream_idle_timeout"]))
        self._base = ""

    def table(self) -> OpTable:
        return serve(Served(ISSUE, self.issue), Served(STATS, self.stats))

    async def start(self) -> None:
        # An exec'd process is reparented to us when its runtime detaches
        # (execproc.py): we reap it and read its status.
        if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
        tls = None
        if self._cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self._cert, self._key)
        port = await self._bind(tls)
        self._base = f"{'https' if tls else 'http'}://{_url_host(self._address)}:{port}"
        log.info("Streaming server on %s", self._base)

    async def _bind(self, tls: ssl.SSLContext | None) -> int:
        if self._port:
            return await self._server.start(self._address, self._port, tls)
        with contextlib.suppress(OSError, ValueError):
            with open(self._port_file, encoding="ascii") as f:
                previous = int(f.read().strip())
            with contextlib.suppress(OSError):
                return await self._server.start(self._address, previous, tls)
        port = await self._server.start(self._address, 0, tls)
        tmp = f"{self._port_file}.tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{port}\n")
        os.replace(tmp, self._port_file)
        return port

    async def issue(self, ctx: OpContext, args: Session) -> Issued:
        if not self._base:
            raise Unavailable("the streaming server is starting")
        token = self._server.tokens.issue(args)
        return Issued(url=f"{self._base}/{args.kind}/{token}")

    async def stats(self, ctx: OpContext, args: Empty) -> StreamStats:
        counters = self._server.counters
        return StreamStats(url=self._base, tokens=len(self._server.tokens),
                           active={kind: counters.active[kind] for kind in KINDS},
                           served={kind: counters.served[kind] for kind in KINDS},
                           refused=dict(counters.refused))


def _url_host(address: str) -> str:
    """The host part of the URLs: an unspecified address is served on
    loopback too, and the kubelet connects from this node."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"[{ip}]" if ip.version == 6 else str(ip)
