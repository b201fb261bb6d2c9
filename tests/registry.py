"""Test registries: Debian's docker-registry on 127.0.0.1, a token issuer,
and a fault-injecting proxy.

- ``start_registry(workdir, ...)`` runs the real CNCF distribution registry
  (``/usr/bin/docker-registry``) on a free 127.0.0.1 port with a config and
  storage dir under ``workdir``; optionally htpasswd auth, token auth (with
  a ``TokenIssuer`` from this module) or TLS. ``Registry.stop()`` ends it by
  the pid this module started, and waits for it.
- ``TokenIssuer``: a token endpoint in a thread, issuing RS256 JWTs signed
  with a key pair made by ``openssl`` for this test run; the registry trusts
  its certificate (``rootcertbundle``), so the token flow is the real one.
- ``FaultProxy``: a small HTTP server in front of a registry that can
  corrupt, stall, cut or fail chosen blob responses. Used only for faults
  the real registry cannot produce.

The registry config is written as JSON, which is valid YAML.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from podvisor.proto import api_pb2 as api
from podvisor.proto import image_ops
from podvisor.proto.contract import Op, Record, from_wire, to_wire
from podvisor.supervisor import config as cfg
from podvisor.workers.base import OpContext, Served
from podvisor.workers.image.ops import ImageService
from podvisor.workers.image.settings import ImageSettings

REGISTRY_BIN = "/usr/bin/docker-registry"
T = TypeVar("T")
A = TypeVar("A", bound=Record)
R = TypeVar("R", bound=Record)


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what``."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                                 f"(last: {last!r})")
        time.sleep(interval)
        last = predicate()
    return last


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True,
                          check=True).stdout


def make_cert(directory: Path, name: str, cn: str = "127.0.0.1",
              address: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``address`` and its key."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
            "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}",
            "-addext", f"subjectAltName=IP:{address}")
    return cert, key


@dataclass
class Registry:
    host: str
    scheme: str
    workdir: Path
    proc: subprocess.Popen[bytes]
    ssl_context: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return (self.workdir / "registry.log").read_text(errors="replace")


def start_registry(workdir: Path, *, users: dict[str, str] | None = None,
                   token: TokenIssuer | None = None, tls: bool = False,
                   address: str = "127.0.0.1") -> Registry:
    """Start docker-registry under ``workdir`` listening on ``address`` (a
    local IPv4 address); return once it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")},
                    "delete": {"enabled": True}},
        "http": {"addr": ""},
    }
    if users is not None:
        lines = [subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True,
                                check=True, text=True).stdout.strip()
                 for user, password in users.items()]
        (workdir / "htpasswd").write_text("\n".join(lines) + "\n")
        config["auth"] = {"htpasswd": {"realm": "podvisor-test",
                                       "path": str(workdir / "htpasswd")}}
    if token is not None:
        config["auth"] = {"token": {"realm": token.realm, "service": token.service,
                                    "issuer": token.issuer,
                                    "rootcertbundle": str(token.cert)}}
    context = None
    if tls:
        cert, key = make_cert(workdir, "tls", address=address)
        config["http"]["tls"] = {"certificate": str(cert), "key": str(key)}
        context = ssl.create_default_context(cafile=str(cert))
    for _ in range(5):
        port = free_port()
        config["http"]["addr"] = f"{address}:{port}"
        path = workdir / "config.yml"
        path.write_text(json.dumps(config))
        with open(workdir / "registry.log", "ab") as log:
            proc = subprocess.Popen([REGISTRY_BIN, "serve", str(path)], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        registry = Registry(f"{address}:{port}", "https" if tls else "http", workdir, proc,
                            context)
        if _wait_ready(registry):
            return registry
        registry.stop()
    raise RuntimeError(f"docker-registry did not start:\n{registry.log()}")


def _wait_ready(registry: Registry, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if registry.proc.poll() is not None:
            return False  # e.g. lost a race for the port
        try:
            status = http_get(registry, "/v2/")[0]
        except OSError:
            time.sleep(0.05)
            continue
        return status in (200, 401)
    return False


def http_get(registry: Registry, path: str,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if registry.scheme == "https":
        conn = http.client.HTTPSConnection(registry.host, timeout=5,
                                           context=registry.ssl_context)
    else:
        conn = http.client.HTTPConnection(registry.host, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# ---- token issuer -----------------------------------------------------------


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Serve ``server`` from a daemon thread, each request on one of its own,
    until ``server.shutdown()``."""
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    return thread


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client refusing our certificate is what some tests want."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """A distribution-spec token endpoint: Basic-authenticated users get what
    they ask for; anonymous callers get a token with no access."""

    service = "podvisor-test-registry"
    issuer = "podvisor-test-issuer"

    def __init__(self, workdir: Path, users: dict[str, str],
                 refresh_tokens: dict[str, str] | None = None, tls: bool = False) -> None:
        """``tls``: serve https with a self-signed certificate for
        127.0.0.1 (``tls_cert``), trusted by nobody unless told."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.users = users
        # OAuth2 refresh token -> user (the CRI identity_token flow).
        self.refresh_tokens = refresh_tokens or {}
        self.cert, self.key = make_cert(workdir, "token-signer", cn="token-signer")
        self._x5c = base64.b64encode(openssl("x509", "-in", str(self.cert),
                                             "-outform", "DER")).decode()
        self.requests: list[dict[str, Any]] = []
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer._serve(self)

            def do_POST(self) -> None:
                issuer._serve_oauth(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.tls_cert: Path | None = None
        if tls:
            self.tls_cert, tls_key = make_cert(workdir, "token-tls")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.tls_cert, tls_key)
            # The handshake runs in the handler thread, not in accept().
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
        self._thread = serve_in_thread(self._server)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def realm(self) -> str:
        scheme = "https" if self.tls_cert is not None else "http"
        return f"{scheme}://{self.host}/token"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def pull_token(self, user: str, repository: str) -> str:
        """A token granting ``user`` pulls of ``repository``, as a credential
        provider would hand it to the kubelet."""
        return self._sign(user, [{"type": "repository", "name": repository,
                                  "actions": ["pull"]}])

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        header = handler.headers.get("Authorization", "")
        user = None
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != password:
                self.requests.append({"user": name, "granted": False})
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
                handler.send_response(401)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)
                return
            user = name
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if user is not None:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        self.requests.append({"user": user, "granted": bool(access),
                              "service": query.get("service", [""])[0]})
        body = json.dumps({"token": self._sign(user or "", access), "expires_in": 300}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _serve_oauth(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        form = parse_qs(handler.rfile.read(length).decode())
        user = self.refresh_tokens.get(form.get("refresh_token", [""])[0])
        if form.get("grant_type") != ["refresh_token"] or user is None:
            self.requests.append({"user": None, "granted": False, "oauth": True})
            self._reply(handler, 401, b'{"error":"invalid_grant"}')
            return
        access = []
        for scope in form.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        self.requests.append({"user": user, "granted": True, "oauth": True,
                              "service": form.get("service", [""])[0]})
        self._reply(handler, 200, json.dumps(
            {"access_token": self._sign(user, access), "expires_in": 300}).encode())

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _sign(self, subject: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}." \
                        f"{_b64url(json.dumps(claims).encode())}"
        signature = openssl("dgst", "-sha256", "-sign", str(self.key),
                            stdin=signing_input.encode())
        return f"{signing_input}.{_b64url(signature)}"


# ---- fault proxy ------------------------------------------------------------


@dataclass
class Faults:
    """What the proxy does to GETs of chosen blobs (by digest)."""

    corrupt: set[str] = field(default_factory=set)
    stall: set[str] = field(default_factory=set)
    cut_once: set[str] = field(default_factory=set)
    # Answer this many requests to any blob with 503 first, with this
    # Retry-After header when it is set.
    unavailable: int = 0
    retry_after: str = ""
    # Answer blob GETs with a 307 to the upstream registry itself.
    redirect: bool = False


class FaultProxy:
    """Forwards to ``upstream`` (plain HTTP), injecting ``faults``."""

    def __init__(self, upstream: Registry, faults: Faults | None = None) -> None:
        self.upstream = upstream
        self.faults = faults or Faults()
        self.log: list[tuple[str, str, str]] = []  # (method, path, range)
        self.times: list[float] = []  # time.monotonic() of each log entry
        self.connections = 0
        self.release = threading.Event()
        self.stalled = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy.connections += 1

            def do_GET(self) -> None:
                proxy._serve(self)

            def do_HEAD(self) -> None:
                proxy._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = serve_in_thread(self._server)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def blob_requests(self, digest: str) -> list[tuple[str, str, str]]:
        return [entry for entry in self.log if entry[1].endswith(f"/blobs/{digest}")]

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        range_header = handler.headers.get("Range", "")
        with self._lock:
            self.log.append((handler.command, handler.path, range_header))
            self.times.append(time.monotonic())
        digest = handler.path.rsplit("/blobs/", 1)[1] if "/blobs/" in handler.path else ""
        if digest and self.faults.unavailable > 0:
            with self._lock:
                self.faults.unavailable -= 1
            headers = {"Content-Type": "application/json"}
            if self.faults.retry_after:
                headers["Retry-After"] = self.faults.retry_after
            self._send(handler, 503, headers,
                       b'{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}')
            return
        if digest and handler.command == "GET" and self.faults.redirect:
            location = f"{self.upstream.url}{handler.path}"
            self._send(handler, 307, {"Location": location}, b"")
            return
        headers = {k: v for k, v in handler.headers.items()
                   if k.lower() in ("accept", "authorization", "range")}
        conn = http.client.HTTPConnection(self.upstream.host, timeout=10)
        try:
            conn.request(handler.command, handler.path, headers=headers)
            upstream = conn.getresponse()
            body = upstream.read()
            passed = {k: v for k, v in upstream.getheaders()
                      if k.lower() in ("content-type", "docker-content-digest", "content-range",
                                       "www-authenticate", "location", "accept-ranges")}
        finally:
            conn.close()
        if handler.command == "GET" and digest and upstream.status in (200, 206):
            if digest in self.faults.corrupt:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            if digest in self.faults.stall:
                self._send_partial(handler, upstream.status, passed, body)
                self.stalled.set()
                self.release.wait()
                return
            if digest in self.faults.cut_once:
                with self._lock:
                    self.faults.cut_once.discard(digest)
                self._send_partial(handler, upstream.status, passed, body)
                handler.close_connection = True
                return
        self._send(handler, upstream.status, passed, body)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str],
              body: bytes) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    @staticmethod
    def _send_partial(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str],
                      body: bytes) -> None:
        """Headers announcing the whole body, then only its first half."""
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        with contextlib.suppress(OSError):
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()


# ---- the image pool under test ---------------------------------------------


@dataclass
class ImageNode:
    """An image pool's own dirs and settings, with its ops called directly
    (a real OpContext, no bus) on a service built from the settings as a
    worker builds it: a fresh service, so no state is shared with another
    test. ``image`` overrides keys of the config's ``[podvisor.image]``
    defaults; the certs.d root is the node's own, and ``environ`` (empty
    unless given, so the runner's proxy variables never leak in) is the
    worker environment the proxy settings are read from."""

    base: Path
    image: dict[str, Any] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)
    service: ImageService = field(init=False)
    ops: dict[str, Served[Any, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.image.setdefault("registries_conf", str(self.base / "registries.conf"))
        self.image.setdefault("pull_progress_timeout", 30.0)
        # Never the host's /etc/containers/policy.json: absent unless a test
        # writes one with ``policy``.
        self.image.setdefault("signature_policy", str(self.base / "policy.json"))
        self.service = ImageService(ImageSettings.from_settings(self.settings()),
                                    certs_dirs=(str(self.base / "certs.d"),),
                                    environ=self.environ)
        self.ops = self.service.ops()

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def blobs(self) -> list[str]:
        """Every blob file in the store, as digests."""
        top = self.root / "image" / "blobs"
        if not top.exists():
            return []
        return sorted(f"{alg.name}:{f.name}" for alg in top.iterdir() for f in alg.iterdir())

    @property
    def partial_files(self) -> list[str]:
        ingest = self.root / "image" / "ingest"
        return sorted(p.name for p in ingest.iterdir()) if ingest.exists() else []

    def settings(self) -> dict[str, Any]:
        """The worker settings as the supervisor would write them."""
        defaults = cfg.to_dict(cfg.from_dict({}))["image"]
        assert isinstance(defaults, dict)
        return {"root": str(self.root), "runroot": str(self.base / "run"),
                "image": {**defaults, **self.image}}

    def context(self, op: str, timeout: float = 60.0) -> OpContext:
        return OpContext(request_id=secrets.token_bytes(16), op=op,
                         deadline=time.monotonic() + timeout)

    def call(self, op: Op[A, R], args: A, timeout: float = 60.0,
             ctx: OpContext | None = None) -> R:
        """``op`` as a worker serves it: the arguments through their wire
        form and checked on arrival, the result checked on return."""
        typed = from_wire(to_wire(args, op.args), op.args, f"{op.name} arguments")
        result = self.ops[op.name].fn(ctx or self.context(op.name, timeout), typed)
        return from_wire(to_wire(result, op.result), op.result, f"{op.name} result")

    def pull(self, image: str, auth: dict[str, str] | None = None, **kw: Any) -> str:
        request = api.PullImageRequest(image=api.ImageSpec(image=image))
        if auth is not None:
            request.auth.CopyFrom(api.AuthConfig(**auth))
        pulled = self.call(image_ops.PULL_IMAGE,
                           image_ops.PullImage(request=request.SerializeToString()), **kw)
        return api.PullImageResponse.FromString(pulled.response).image_ref

    def status(self, image: str, verbose: bool = False) -> api.ImageStatusResponse:
        request = api.ImageStatusRequest(image=api.ImageSpec(image=image), verbose=verbose)
        answer = self.call(image_ops.IMAGE_STATUS,
                           image_ops.ImageStatus(request=request.SerializeToString()))
        return api.ImageStatusResponse.FromString(answer.response)

    def remove(self, image: str) -> api.RemoveImageResponse:
        request = api.RemoveImageRequest(image=api.ImageSpec(image=image))
        removed = self.call(image_ops.REMOVE_IMAGE,
                            image_ops.RemoveImage(request=request.SerializeToString()))
        return api.RemoveImageResponse.FromString(removed.response)

    def list(self, image: str = "") -> list[api.Image]:
        request = api.ListImagesRequest()
        if image:
            request.filter.image.image = image
        listed = self.call(image_ops.LIST_IMAGES,
                           image_ops.ListImages(request=request.SerializeToString()))
        return list(api.ListImagesResponse.FromString(listed.response).images)

    def resolve(self, image: str) -> image_ops.ResolvedImage:
        return self.call(image_ops.RESOLVE_IMAGE, image_ops.ResolveImage(image=image))

    def policy(self, doc: dict[str, Any] | str) -> Path:
        """Write the node's containers-policy.json (a dict as JSON, or raw text)."""
        path = Path(self.image["signature_policy"])
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return path

    def registries_conf(self, text: str) -> None:
        Path(self.image["registries_conf"]).write_text(text)

    def insecure(self, *hosts: str, extra: str = "") -> None:
        """A registries.conf allowing plain HTTP to ``hosts``, after ``extra``
        (which may hold top-level keys, so it goes first)."""
        tables = "".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n\n' for h in hosts)
        self.registries_conf(extra + "\n" + tables)
