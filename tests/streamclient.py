"""Blocking test-side clients of the CRI streaming protocols.

``SpdyConnection``: the HTTP/1.1 upgrade to SPDY/3.1 that client-go sends
(POST, one ``X-Stream-Protocol-Version`` line per protocol), then SPDY
through ``podvisor.workers.stream.spdy.FrameCodec``: odd stream ids, each
stream waited for its SYN_REPLY, as spdystream does. ``WsClient``: a
WebSocket (wsproto, client side) on the channel protocols, ``[ch] + data``
per binary message, v5's ``[255, ch]`` close, pings answered.

``open_command`` gives both the same face (``Command``) for exec and
attach; ``PortForward`` pairs error and data streams per connection as
client-go's port forwarder does. Every read stream lands in an ``Inbox``,
which remembers whether it ended by the protocol (FIN, RST, GOAWAY, a
Close 1000) or because the connection was lost.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from podvisor.workers.stream import spdy

V4 = "v4.channel.k8s.io"
V5 = "v5.channel.k8s.io"
PORT_FORWARD = "portforward.k8s.io"
# client-go's SPDY executor offers these, best first.
SPDY_PROTOCOLS = (V5, V4, "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
CLOSE = 255  # v5: [255, ch] half-closes ch
TIMEOUT = 30.0
CHUNK = 32 * 1024


class UpgradeRefused(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class Inbox:
    """The bytes one stream has received, and how it ended."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._data = bytearray()
        self.ended = False
        self.lost = False  # ended by a lost connection, not by the protocol

    def put(self, data: bytes) -> None:
        with self._cond:
            self._data += data
            self._cond.notify_all()

    def end(self, lost: bool = False) -> None:
        with self._cond:
            if not self.ended:
                self.ended, self.lost = True, lost
            self._cond.notify_all()

    @property
    def data(self) -> bytes:
        with self._cond:
            return bytes(self._data)

    def wait_for(self, pattern: bytes, start: int = 0, timeout: float = TIMEOUT) -> re.Match[bytes]:
        """The first match of the regex ``pattern`` at or after ``start``."""
        regex = re.compile(pattern)
        with self._cond:
            found: list[re.Match[bytes]] = []

            def seen() -> bool:
                match = regex.search(self._data, start)
                if match:
                    found.append(match)
                return bool(match) or self.ended
            self._cond.wait_for(seen, timeout)
            if not found:
                raise AssertionError(f"{pattern!r} not received within {timeout}s (ended: "
                                     f"{self.ended}); got {bytes(self._data[start:])[-500:]!r}")
            return found[0]

    def wait_end(self, timeout: float = TIMEOUT) -> bytes:
        with self._cond:
            if not self._cond.wait_for(lambda: self.ended, timeout):
                raise AssertionError(f"stream did not end within {timeout}s; "
                                     f"got {bytes(self._data)[-500:]!r}")
            return bytes(self._data)


@dataclass
class Result:
    stdout: bytes
    stderr: bytes
    status: dict[str, Any] | None  # the error stream's JSON; None when it was empty
    clean: bool  # every stream ended by the protocol, none by a lost connection


def _connect(url: str, timeout: float) -> tuple[socket.socket, str, str]:
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname and parts.port, url
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    return sock, parts.netloc, parts.path + (f"?{parts.query}" if parts.query else "")


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except (ConnectionResetError, OSError):
        return b""


# --- SPDY -------------------------------------------------------------------


class SpdyStream:
    def __init__(self, conn: SpdyConnection, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.inbox = Inbox()
        self.replied = threading.Event()
        self.accepted = False  # a SYN_REPLY came (a reset may follow it)
        self.reset = False

    def write(self, data: bytes) -> None:
        for at in range(0, len(data), CHUNK):
            self.conn.send(spdy.Data(self.id, data[at:at + CHUNK]))

    def close(self) -> None:
        """Half-close: an empty DATA frame with FIN."""
        self.conn.send(spdy.Data(self.id, b"", fin=True))


class SpdyConnection:
    """One upgraded connection; a thread reads it and fills the streams' inboxes."""

    def __init__(self, url: str, protocols: Sequence[str], timeout: float = TIMEOUT) -> None:
        self.sock, host, target = _connect(url, timeout)
        lines = [f"POST {target} HTTP/1.1", f"Host: {host}", "Content-Length: 0",
                 "Connection: Upgrade", "Upgrade: SPDY/3.1",
                 *(f"X-Stream-Protocol-Version: {p}" for p in protocols)]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, headers, rest = _read_head(self.sock)
        if status != 101:
            body = _read_body(self.sock, headers, rest)
            self.sock.close()
            raise UpgradeRefused(status, body)
        self.protocol = headers.get("x-stream-protocol-version", "")
        self.codec = spdy.FrameCodec()
        self.streams: dict[int, SpdyStream] = {}
        self.goaway = False
        self._ids = itertools.count(1, 2)
        self._lock = threading.Lock()
        self.sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, args=(rest,), daemon=True)
        self._reader.start()

    def send(self, frame: spdy.Frame) -> None:
        with self._lock:
            self.sock.sendall(self.codec.encode(frame))

    def open(self, headers: dict[str, str], timeout: float = TIMEOUT) -> SpdyStream:
        with self._lock:  # ids must reach the wire in increasing order
            stream = SpdyStream(self, next(self._ids))
            self.streams[stream.id] = stream
            self.sock.sendall(self.codec.encode(spdy.SynStream(
                stream.id, {k: [v] for k, v in headers.items()})))
        if not stream.replied.wait(timeout):
            raise AssertionError(f"no SYN_REPLY for stream {headers} within {timeout}s")
        if not stream.accepted:
            raise ConnectionError(f"stream {headers} was refused")
        return stream

    def _read(self, rest: bytes) -> None:
        data = rest
        try:
            while True:
                for frame in self.codec.feed(data):
                    self._dispatch(frame)
                data = _recv(self.sock)
                if not data:
                    break
        except spdy.SpdyError:
            pass
        for stream in list(self.streams.values()):
            stream.inbox.end(lost=True)
            stream.replied.set()

    def _dispatch(self, frame: spdy.Frame) -> None:
        match frame:
            case spdy.SynReply(stream_id=sid, fin=fin) if sid in self.streams:
                self.streams[sid].accepted = True
                self.streams[sid].replied.set()
                if fin:
                    self.streams[sid].inbox.end()
            case spdy.Data(stream_id=sid, data=data, fin=fin) if sid in self.streams:
                self.streams[sid].inbox.put(data)
                if fin:
                    self.streams[sid].inbox.end()
            case spdy.RstStream(stream_id=sid) if sid in self.streams:
                self.streams[sid].reset = True
                self.streams[sid].replied.set()
                self.streams[sid].inbox.end()
            case spdy.Ping(ping_id=pid) if pid % 2 == 0:  # the server's: echo it
                with contextlib.suppress(OSError):
                    self.send(frame)
            case spdy.GoAway():
                self.goaway = True
                for stream in list(self.streams.values()):
                    stream.inbox.end()
                    stream.replied.set()

    def close(self) -> None:
        """As client-go: reset what is open, GOAWAY, close."""
        with contextlib.suppress(OSError):
            for stream in list(self.streams.values()):
                if not stream.inbox.ended:
                    self.send(spdy.RstStream(stream.id, spdy.RstStatus.CANCEL))
            self.send(spdy.GoAway(0))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(5)
        self.sock.close()


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names, last value wins) and the bytes after them."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = _recv(sock)
        if not more:
            raise ConnectionError(f"connection closed during the upgrade; got {buf!r}")
        buf += more
    head, rest = buf.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, rest


def _read_body(sock: socket.socket, headers: dict[str, str], body: bytes) -> bytes:
    want = int(headers.get("content-length", -1))
    while want < 0 or len(body) < want:
        more = _recv(sock)
        if not more:
            break
        body += more
    return body


# --- WebSocket ----------------------------------------------------------------


class WsClient:
    """A channel-protocol WebSocket; a thread reads it into one inbox per channel."""

    def __init__(self, url: str, subprotocols: Sequence[str] = (V5,),
                 timeout: float = TIMEOUT) -> None:
        self.sock, host, target = _connect(url, timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=host, target=target,
                                               subprotocols=list(subprotocols))))
        self.channels = {ch: Inbox() for ch in range(5)}
        self.close_code: int | None = None
        self.text_messages = 0
        self._lock = threading.Lock()
        self._message = bytearray()
        events = self._handshake()
        self.sock.settimeout(None)
        for event in events:
            self._dispatch(event)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _handshake(self) -> list[Event]:
        status, body = 0, b""
        while True:
            data = _recv(self.sock)
            self.ws.receive_data(data or None)
            events = list(self.ws.events())
            for i, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    self.subprotocol = event.subprotocol
                    return events[i + 1:]
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise UpgradeRefused(status, b"")
                if isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise UpgradeRefused(status, body)
            if not data:
                raise UpgradeRefused(status, body) if status else ConnectionError(
                    "connection closed during the WebSocket handshake")

    def _read(self) -> None:
        while self.close_code is None:
            data = _recv(self.sock)
            try:
                self.ws.receive_data(data or None)
                for event in self.ws.events():
                    self._dispatch(event)
            except Exception:  # a broken frame: the connection is lost
                break
            if not data:
                break
        for inbox in self.channels.values():
            inbox.end(lost=self.close_code != 1000)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, BytesMessage):
            self._message += event.data
            if event.message_finished:
                message, self._message = bytes(self._message), bytearray()
                if message and message[0] in self.channels:
                    self.channels[message[0]].put(message[1:])
        elif isinstance(event, TextMessage):
            self.text_messages += 1
        elif isinstance(event, Ping):
            self._send(event.response())
        elif isinstance(event, CloseConnection):
            self.close_code = event.code
            if self.ws.state is ConnectionState.REMOTE_CLOSING:
                self._send(event.response())

    def _send(self, event: Event) -> None:
        with self._lock, contextlib.suppress(OSError):
            self.sock.sendall(self.ws.send(event))

    def send(self, channel: int, data: bytes) -> None:
        self._send(Message(data=bytes([channel]) + data))

    def close_channel(self, channel: int) -> None:
        self._send(Message(data=bytes([CLOSE, channel])))

    def close(self) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self._send(CloseConnection(code=1000))
            self._reader.join(5)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(5)
        self.sock.close()


# --- exec and attach, over either ------------------------------------------------


class Command(Protocol):
    """A live exec or attach session."""

    stdout: Inbox
    stderr: Inbox
    error: Inbox

    def write(self, data: bytes) -> None: ...
    def close_stdin(self) -> None: ...
    def resize(self, width: int, height: int) -> None: ...
    def close(self) -> None: ...


def resize_message(width: int, height: int) -> bytes:
    """A TerminalSize as client-go's json.Encoder writes it."""
    return json.dumps({"Width": width, "Height": height}, separators=(",", ":")).encode() + b"\n"


class SpdyCommand:
    def __init__(self, url: str, *, stdin: bool, stdout: bool, stderr: bool, tty: bool,
                 protocols: Sequence[str] = (V4,)) -> None:
        self.conn = SpdyConnection(url, protocols)
        self.protocol = self.conn.protocol
        # client-go's order: error, stdin, stdout, stderr, resize.
        self.error_stream = self.conn.open({"streamtype": "error"})
        self.stdin = self.conn.open({"streamtype": "stdin"}) if stdin else None
        self._out = self.conn.open({"streamtype": "stdout"}) if stdout else None
        self._err = self.conn.open({"streamtype": "stderr"}) if stderr and not tty else None
        self._resize = self.conn.open({"streamtype": "resize"}) if tty else None
        self.error = self.error_stream.inbox
        self.stdout = self._out.inbox if self._out else _ended()
        self.stderr = self._err.inbox if self._err else _ended()

    def write(self, data: bytes) -> None:
        assert self.stdin is not None
        self.stdin.write(data)

    def close_stdin(self) -> None:
        assert self.stdin is not None
        self.stdin.close()

    def resize(self, width: int, height: int) -> None:
        self.send_resize(resize_message(width, height))

    def send_resize(self, raw: bytes) -> None:
        assert self._resize is not None
        self._resize.write(raw)

    def close(self) -> None:
        self.conn.close()


class WsCommand:
    def __init__(self, url: str, *, protocol: str) -> None:
        self.ws = WsClient(url, (protocol,))
        self.protocol = self.ws.subprotocol
        self.stdout = self.ws.channels[STDOUT]
        self.stderr = self.ws.channels[STDERR]
        self.error = self.ws.channels[ERROR]

    def write(self, data: bytes) -> None:
        for at in range(0, len(data), CHUNK):
            self.ws.send(STDIN, data[at:at + CHUNK])

    def close_stdin(self) -> None:
        assert self.protocol == V5, "only v5 can half-close stdin"
        self.ws.close_channel(STDIN)

    def resize(self, width: int, height: int) -> None:
        self.send_resize(resize_message(width, height))

    def send_resize(self, raw: bytes) -> None:
        self.ws.send(RESIZE, raw)

    def close(self) -> None:
        self.ws.close()


def _ended() -> Inbox:
    inbox = Inbox()
    inbox.end()
    return inbox


TRANSPORTS = ("spdy-v4", "ws-v4", "ws-v5")


def open_command(transport: str, url: str, *, stdin: bool = False, stdout: bool = True,
                 stderr: bool = True, tty: bool = False) -> SpdyCommand | WsCommand:
    """``transport``: one of TRANSPORTS. The streams must match the CRI request's."""
    if transport == "spdy-v4":
        cmd: SpdyCommand | WsCommand = SpdyCommand(url, stdin=stdin, stdout=stdout,
                                                   stderr=stderr, tty=tty)
    else:
        cmd = WsCommand(url, protocol=V4 if transport == "ws-v4" else V5)
    want = V4 if transport != "ws-v5" else V5
    assert cmd.protocol == want, f"negotiated {cmd.protocol!r}, not {want}"
    return cmd


def finish(cmd: Command, timeout: float = TIMEOUT) -> Result:
    """Wait for the session to end; then close our side."""
    try:
        stdout = cmd.stdout.wait_end(timeout)
        stderr = cmd.stderr.wait_end(timeout)
        error = cmd.error.wait_end(timeout)
    finally:
        cmd.close()
    clean = not (cmd.stdout.lost or cmd.stderr.lost or cmd.error.lost)
    return Result(stdout, stderr, json.loads(error) if error else None, clean)


def run_command(transport: str, url: str, *, stdin: bytes | None = None, stdout: bool = True,
                stderr: bool = True, tty: bool = False,
                resize: tuple[int, int] | None = None, timeout: float = TIMEOUT) -> Result:
    """A whole exec/attach: optional resize, stdin written and half-closed
    (v4 WebSocket cannot half-close: stdin stays open there), then the end."""
    cmd = open_command(transport, url, stdin=stdin is not None, stdout=stdout,
                       stderr=stderr, tty=tty)
    if resize:
        cmd.resize(*resize)
    if stdin is not None:
        cmd.write(stdin)
        if transport != "ws-v4":
            cmd.close_stdin()
    return finish(cmd, timeout)


def succeeded(result: Result) -> bool:
    """What client-go counts as success: a clean end, and no status or Success."""
    return result.clean and (result.status is None or result.status.get("status") == "Success")


# --- port forward -------------------------------------------------------------------


class PortForward:
    """One SPDY port-forward session; each ``connect`` is one TCP connection."""

    def __init__(self, url: str) -> None:
        self.conn = SpdyConnection(url, (PORT_FORWARD,))
        assert self.conn.protocol == PORT_FORWARD, self.conn.protocol
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def connect(self, port: int) -> tuple[SpdyStream, SpdyStream]:
        """(error, data) streams, as client-go: the error stream half-closed at once."""
        with self._lock:
            request = str(next(self._ids))
        headers = {"streamtype": "error", "port": str(port), "requestid": request}
        error = self.conn.open(headers)
        error.close()
        data = self.conn.open({**headers, "streamtype": "data"})
        return error, data

    def http_get(self, port: int, path: str, timeout: float = TIMEOUT) -> tuple[bytes, bytes]:
        """(HTTP/1.0 response, whatever came on the error stream)."""
        error, data = self.connect(port)
        data.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data.close()
        response = data.inbox.wait_end(timeout)
        return response, error.inbox.wait_end(timeout)

    def close(self) -> None:
        self.conn.close()


def http_body(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200", head
    return body

