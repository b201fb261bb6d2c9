"""The streaming server: HTTP/1.1 upgrades to SPDY or WebSocket sessions.

A request is ``GET|POST /<kind>/<token>``. The token is consumed as the
request arrives, whatever follows: a second use, an unknown or an expired
token gets 404 and nothing runs. h11 parses the request and writes every
answer; the upgrade decides the protocol:

- ``Upgrade: websocket``: wsproto completes the handshake. Exec and attach
  take ``v5.channel.k8s.io`` or ``v4.channel.k8s.io``; port-forward takes
  ``SPDY/3.1+portforward.k8s.io``, SPDY carried in binary messages.
- ``Upgrade: SPDY/3.1``: ``X-Stream-Protocol-Version`` names the
  protocols the client speaks; the first we speak wins (remotecommand
  v4..v1, or ``portforward.k8s.io``).

A refused request (no token, no protocol in common, a bad upgrade) is
answered with its HTTP status and logged in one line; other sessions
never notice. Sessions are counted per kind for ``stream.stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request

from ...proto.stream_ops import ATTACH, EXEC, KINDS, PORT_FORWARD, Session
from . import over_spdy, over_ws, portforward, remotecommand
from .attachconn import AttachConnection, AttachError
from .execproc import ExecError, ExecProcess
from .spdyconn import SpdySession
from .tokens import Tokens
from .transport import TcpTransport, Transport
from .wsconn import WebSocket, WsTransport

log = logging.getLogger(__name__)

HEAD_MAX = 16 * 1024
HEAD_TIMEOUT = 10.0
TUNNEL = "SPDY/3.1+" + portforward.PROTOCOL


@dataclass
class Counters:
    active: Counter[str]
    served: Counter[str]
    refused: Counter[str]


class StreamServer:
    def __init__(self, tokens: Tokens, idle_timeout: float) -> None:
        self.tokens = tokens
        self.idle_timeout = idle_timeout
        self.counters = Counters(Counter(), Counter(), Counter())
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None) -> int:
        self._server = await asyncio.start_server(self._accept, host, port, ssl=tls,
                                                  reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._serve(reader, writer)
        except Exception:
            log.exception("A streaming session failed")
        finally:
            self._sessions.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            return self._refused("bad-request", "a request head that never ended")
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_MAX)
        conn.receive_data(head)
        try:
            request = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return self._refused("bad-request", f"a malformed request ({exc})")
        if not isinstance(request, h11.Request):
            return self._refused("bad-request", "a request head that never ended")
        path = request.target.decode("latin-1").split("?", 1)[0]
        parts = path.strip("/").split("/")
        session = None
        if len(parts) == 2 and parts[0] in KINDS and request.method in (b"GET", b"POST"):
            session = self.tokens.consume(parts[0], parts[1])
        if session is None:
            self._refused("not-found", f"{request.method.decode()} of an unknown, used "
                          "or expired URL")
            return await _answer(conn, writer, 404, "404 page not found\n")
        headers = {name.decode().lower(): value.decode("latin-1")
                   for name, value in request.headers}
        offered = [v.strip() for name, value in request.headers
                   if name.lower() == b"x-stream-protocol-version"
                   for v in value.decode("latin-1").split(",") if v.strip()]
        if headers.get("upgrade", "").lower() == "websocket":
            await self._websocket(session, request.target.decode("latin-1"), head, reader,
                                  writer)
        elif "spdy/3.1" in headers.get("upgrade", "").lower():
            await self._spdy(session, offered, conn, reader, writer)
        else:
            self._refused("bad-upgrade", "a request upgrading to neither SPDY/3.1 "
                          "nor websocket")
            await _answer(conn, writer, 400, "unable to upgrade: missing upgrade headers "
                          "in request\n")

    def _refused(self, reason: str, what: str) -> None:
        self.counters.refused[reason] += 1
        log.warning("Streaming server refused %s", what)

    async def _spdy(self, session: Session, offered: list[str], conn: h11.Connection,
                    reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        supported = ((portforward.PROTOCOL,) if session.kind == PORT_FORWARD
                     else over_spdy.PROTOCOLS)
        chosen = next((p for p in offered if p in supported), None)
        if chosen is None:
            self._refused("protocol", f"a {session.kind} offering none of "
                          f"{', '.join(supported)} over SPDY")
            return await _answer(conn, writer, 403, "unable to upgrade: unable to negotiate "
                                 f"protocol: server accepts {list(supported)}\n")
        # The request has no body (POST with none, or GET), so h11 has seen
        # it end; anything after the head is SPDY already.
        while conn.next_event() not in (h11.NEED_DATA, h11.PAUSED):
            pass
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=[
            ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", chosen)])))
        transport = TcpTransport(reader, writer, conn.trailing_data[0])
        await self._run(session, chosen, transport)

    async def _websocket(self, session: Session, target: str, head: bytes,
                         reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(head)
        event = next(iter(ws.events()), None)
        if not isinstance(event, Request):
            self._refused("bad-upgrade", "a malformed WebSocket handshake")
            return await _ws_reject(ws, writer, 400, "malformed websocket handshake\n")
        supported = ((TUNNEL, portforward.CHANNELS) if session.kind == PORT_FORWARD
                     else over_ws.PROTOCOLS)
        chosen = next((p for p in event.subprotocols if p in supported), None)
        if chosen is None:
            self._refused("protocol", f"a {session.kind} offering none of "
                          f"{', '.join(supported)} over WebSocket")
            return await _ws_reject(ws, writer, 403, "unable to negotiate protocol: server "
                                    f"accepts {list(supported)}\n")
        writer.write(ws.send(AcceptConnection(subprotocol=chosen)))
        socket = WebSocket(ws, reader, writer, self.idle_timeout)
        if chosen == TUNNEL:
            return await self._run(session, portforward.PROTOCOL, WsTransport(socket))
        if session.kind == PORT_FORWARD:
            forward, ports = session.forward, _query_ports(target) or session.ports
            assert forward is not None
            try:
                await self._counted(session.kind, lambda: portforward.serve_channels(
                    forward, ports, socket))
            finally:
                await socket.close()
            return
        channels = over_ws.WsChannels(socket, chosen, session.streams)
        try:
            await self._counted(session.kind, lambda: self._command(session, channels))
        finally:
            channels.stop()
            await socket.close()

    async def _run(self, session: Session, version: str, transport: Transport) -> None:
        """A SPDY session: port-forward, or exec and attach."""
        if session.kind == PORT_FORWARD:
            assert session.forward is not None
            forwarder = portforward.PortForwarder(session.forward)
            spdy = SpdySession(transport, forwarder.on_stream, self.idle_timeout)
            try:
                await self._counted(session.kind, spdy.run)
            finally:
                forwarder.stop()
                await spdy.close()
            return
        channels = over_spdy.SpdyChannels(version, session.streams)
        spdy = SpdySession(transport, channels.on_stream, self.idle_timeout)
        channels.serving = asyncio.create_task(spdy.run())
        try:
            if await channels.ready():
                await self._counted(session.kind, lambda: self._command(session, channels))
            else:
                log.warning("Streaming server: the client of a %s never opened its "
                            "streams", session.kind)
        finally:
            await spdy.close()
            channels.serving.cancel()

    async def _counted(self, kind: str, work: Callable[[], Awaitable[None]]) -> None:
        self.counters.served[kind] += 1
        self.counters.active[kind] += 1
        try:
            await work()
        finally:
            self.counters.active[kind] -= 1

    async def _command(self, session: Session,
                       channels: over_spdy.SpdyChannels | over_ws.WsChannels) -> None:
        backend: ExecProcess | AttachConnection
        if session.kind == EXEC:
            assert session.exec is not None
            backend = ExecProcess(session.exec, session.streams)
            what = f"exec in container {session.exec.container_id}"
        else:
            assert session.kind == ATTACH and session.attach is not None
            backend = AttachConnection(session.attach)
            what = f"attach to container {session.attach.container_id}"
        try:
            try:
                await backend.start()
            except (ExecError, AttachError, OSError) as exc:
                log.warning("Streaming server: %s failed: %s", what, exc)
                return await channels.finish(remotecommand.failure(
                    f"Internal error occurred: error executing {what}: {exc}"))
            await remotecommand.run(session.kind, channels, backend)
        finally:
            await backend.kill()
            backend.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._sessions, return_exceptions=True)


async def _answer(conn: h11.Connection, writer: asyncio.StreamWriter, status: int,
                  body: str) -> None:
    data = body.encode()
    with contextlib.suppress(h11.LocalProtocolError, ConnectionError, OSError):
        writer.write(conn.send(h11.Response(status_code=status, headers=[
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))),
            ("Connection", "close")])))
        writer.write(conn.send(h11.Data(data=data)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()


async def _ws_reject(ws: WSConnection, writer: asyncio.StreamWriter, status: int,
                     body: str) -> None:
    data = body.encode()
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(ws.send(RejectConnection(status_code=status, has_body=True, headers=[
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(data)).encode())])))
        writer.write(ws.send(RejectData(data=data)))
        await writer.drain()


def _query_ports(target: str) -> list[int]:
    """``?port=80&port=443`` or ``?port=80,443``; bad values are skipped."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    ports = []
    for value in query.get("port", []):
        for item in value.split(","):
            if item.strip().isdigit() and 1 <= int(item) <= 65535:
                ports.append(int(item))
    return ports
