"""A small forward proxy on 127.0.0.1 for the proxy tests.

``ForwardProxy`` speaks what an enterprise HTTP proxy speaks to a client:

- ``CONNECT host:port``: a TCP tunnel (https registries), spliced both ways
  until either side closes;
- absolute-form requests (``GET http://host:port/path``): forwarded to the
  origin with http.client, the answer relayed with its Content-Length.

Every request is recorded in ``log`` as ``(method, target)``. With ``users``
set, a request without matching ``Proxy-Authorization: Basic`` credentials
gets ``407`` and is recorded as refused. ``stop()`` closes the listener and
every tunnel it still holds, and joins the server thread.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import selectors
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from registry import serve_in_thread

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-authenticate",
               "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


class ForwardProxy:
    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.users = users
        self.log: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._tunnels: set[socket.socket] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_CONNECT(self) -> None:
                proxy._connect(self)

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_HEAD(self) -> None:
                proxy._forward(self)

            def do_POST(self) -> None:
                proxy._forward(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = serve_in_thread(self._server)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def url(self, user: str = "", password: str = "") -> str:
        creds = f"{user}:{password}@" if user else ""
        return f"http://{creds}{self.address}"

    def targets(self, needle: str) -> list[tuple[str, str]]:
        """Recorded requests whose target contains ``needle``."""
        with self._lock:
            return [entry for entry in self.log if needle in entry[1]]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            tunnels, self._tunnels = list(self._tunnels), set()
        for sock in tunnels:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join()

    # ---- serving -------------------------------------------------------------

    def _allowed(self, handler: BaseHTTPRequestHandler) -> bool:
        entry = (handler.command, handler.path)
        if self.users is None:
            with self._lock:
                self.log.append(entry)
            return True
        header = handler.headers.get("Proxy-Authorization", "")
        scheme, _, token = header.partition(" ")
        user, _, password = (base64.b64decode(token).decode(errors="replace")
                             if scheme.lower() == "basic" else "").partition(":")
        if user and self.users.get(user) == password:
            with self._lock:
                self.log.append(entry)
            return True
        with self._lock:
            self.refused.append(entry)
        body = b"proxy authentication required\n"
        handler.send_response(407)
        handler.send_header("Proxy-Authenticate", 'Basic realm="podvisor-test-proxy"')
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        return False

    def _connect(self, handler: BaseHTTPRequestHandler) -> None:
        if not self._allowed(handler):
            return
        host, _, port = handler.path.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        except (OSError, ValueError):
            handler.send_error(502, "cannot reach the origin")
            return
        handler.send_response(200, "Connection established")
        handler.end_headers()
        handler.wfile.flush()
        client = handler.connection
        with self._lock:
            self._tunnels.update((client, upstream))
        try:
            self._splice(client, upstream)
        finally:
            with self._lock:
                self._tunnels.difference_update((client, upstream))
            upstream.close()
            handler.close_connection = True

    @staticmethod
    def _splice(a: socket.socket, b: socket.socket) -> None:
        a.settimeout(None)
        b.settimeout(None)
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while True:
                for key, _ in sel.select(timeout=30):
                    try:
                        data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                        if not data:
                            return
                        key.data.sendall(data)
                    except OSError:
                        return

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        if not self._allowed(handler):
            return
        parts = urlsplit(handler.path)
        if parts.scheme != "http" or not parts.netloc:
            handler.send_error(400, "absolute-form http URL expected")
            return
        length = int(handler.headers.get("Content-Length", "0") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = http.client.HTTPConnection(parts.netloc, timeout=30)
        try:
            conn.request(handler.command, target or "/", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            passed = [(k, v) for k, v in response.getheaders()
                      if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"]
        except OSError:
            handler.send_error(502, "cannot reach the origin")
            return
        finally:
            conn.close()
        handler.send_response(response.status, response.reason)
        for key, value in passed:
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
