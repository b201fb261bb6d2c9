"""OCI distribution client for one registry host, for one pull attempt.

Speaks the pull half of the OCI distribution spec: ``GET /v2/`` (ping and
auth discovery), ``GET /v2/<name>/manifests/<reference>`` and
``GET /v2/<name>/blobs/<digest>``.

Scheme
    HTTPS with verification. A host marked ``insecure`` in registries.conf
    is tried over HTTPS without verification first and then plain HTTP,
    decided once at the first ping (containers/image does the same).

Authentication
    The ping's ``WWW-Authenticate`` picks Basic or Bearer (auth.py); bearer
    tokens are cached per scope until they expire. A 401 on a request made
    with a token refreshes the token once (it may lack the scope); a second
    401 is an authentication error naming the registry and who we were.

Retries
    Connection resets, timeouts, truncated bodies, 429 and 5xx answers are
    retried ``attempts`` times. urllib3's ``Retry`` counts them and computes
    the wait: exponential backoff with jitter, or the answer's
    ``Retry-After`` (seconds or an HTTP date), both capped at ``max_delay``
    so a wait never outlasts the progress watchdog. The wait itself is the
    watchdog's, so a cancel ends it. A refused connection or an unknown
    host is not retried: the next mirror is the better bet. Blob bodies cut short resume
    with ``Range: bytes=<received>-`` when the registry answers 206, and
    start over when it answers 200.

Cancellation
    Every socket is registered with the attempt's Watchdog, which shuts it
    down on a stall, a cancelled caller or a failed sibling download; the
    error a read then gets is replaced by the watchdog's reason, so the
    message says *why* the read failed, and nothing is retried after it.

Redirects (blob storage often answers 307 to a CDN) are followed up to five
hops; credentials are never sent to another origin, and an insecure
registry's relaxed TLS never extends to another host (its token server
included).

Proxies
    The transport picks the proxy (transport.py, proxy.py). A proxy that
    cannot be reached is UNAVAILABLE naming the proxy; one that wants other
    credentials (407) is FAILED_PRECONDITION: the node's proxy variables
    are wrong, and no retry mends them.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProxyError
from urllib3.util import Retry

from ...proto.errors import BusError, FailedPrecondition, NotFound, Unavailable
from . import auth
from .auth import Challenge, Credentials, Token
from .errors import DataLoss, PermissionDenied, Unauthenticated
from .transport import Response, Transport
from .watchdog import Watchdog

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
# Docker Hub is named docker.io but serves the API from this host.
DOCKER_HUB_API = "registry-1.docker.io"
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Error bodies are read only this far: enough for the registry's JSON.
_ERROR_BODY_LIMIT = 64 * 1024
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry; ``start()`` gives the urllib3
    ``Retry`` one request's failures are counted on."""

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    jitter: float = 0.2

    def start(self) -> Retry:
        # Only ``total`` counts: what is retried is decided by the caller.
        # allowed_methods=None: the token server's POST is retried too.
        return Retry(total=self.attempts - 1, connect=None, read=None, redirect=None,
                     status=None, other=None, allowed_methods=None,
                     backoff_factor=self.base_delay, backoff_max=self.max_delay,
                     backoff_jitter=self.jitter, respect_retry_after_header=True,
                     raise_on_status=False)


class _Attempts:
    """One request's retry count, on urllib3's ``Retry``."""

    def __init__(self, policy: RetryPolicy, method: str, url: str) -> None:
        self._policy = policy
        self._retry = policy.start()
        self._method = method
        self._url = url
        self.failures = 0

    def failed(self, response: Response | None = None) -> float | None:
        """Count a failure; the wait before the next try, None when spent."""
        self.failures += 1
        raw = response.raw if response is not None else None
        try:
            self._retry = self._retry.increment(self._method, self._url, response=raw,
                                                error=None if raw is not None else _Failure())
        except MaxRetryError:
            return None
        after = self._retry.get_retry_after(raw) if raw is not None else None
        wait = after if after is not None else self._retry.get_backoff_time()
        return min(wait, self._policy.max_delay)


class _Failure(Exception):
    """Stands for a failed try in urllib3's retry history."""


class BlobSink(Protocol):
    """Where a streamed blob goes (the store's ingest file)."""

    @property
    def offset(self) -> int: ...

    def write(self, data: memoryview) -> None: ...

    def reset(self) -> None: ...


class _Retry(Exception):
    """One try failed in a way worth another try."""


# What a transport or body read can raise that is not ours.
_IO_ERRORS = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError)


@dataclass(frozen=True)
class Fetched:
    body: bytes
    media_type: str
    digest_header: str


class RegistryClient:
    def __init__(self, transport: Transport, host: str, *, insecure: bool,
                 credentials: Credentials | None, watchdog: Watchdog,
                 retry: RetryPolicy | None = None) -> None:
        self.host = DOCKER_HUB_API if host == "docker.io" else host
        self.insecure = insecure
        self._transport = transport
        self._creds = credentials
        self._watchdog = watchdog
        self._retry = retry or RetryPolicy()
        self._base: str | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[str, Token] = {}
        self._lock = threading.Lock()

    # ---- public calls ---------------------------------------------------

    def get_manifest(self, repository: str, reference: str, accept: str,
                     limit: int) -> Fetched:
        """GET a manifest or index by tag or digest (body at most ``limit``)."""
        what = f"manifest {repository}:{reference}" if ":" not in reference \
            else f"manifest {repository}@{reference}"
        response = self._request("GET", f"/v2/{repository}/manifests/{reference}", repository,
                                 {"Accept": accept}, what)
        try:
            body = self._read_all(response, limit, what)
        finally:
            response.close()
        media_type = response.header("Content-Type").split(";", 1)[0].strip()
        return Fetched(body, media_type, response.header("Docker-Content-Digest"))

    def get_blob(self, repository: str, digest: str, limit: int) -> bytes:
        """GET a small blob (an image config) into memory."""
        what = f"blob {repository}@{digest}"
        response = self._request("GET", f"/v2/{repository}/blobs/{digest}", repository, {},
                                 what)
        try:
            return self._read_all(response, limit, what)
        finally:
            response.close()

    def fetch_blob(self, repository: str, digest: str, sink: BlobSink) -> None:
        """Stream a blob into ``sink``, resuming after connection loss.

        The sink verifies size and digest when it is committed; this only
        moves bytes, resuming where the last connection stopped.
        """
        what = f"blob {repository}@{digest}"
        path = f"/v2/{repository}/blobs/{digest}"
        attempts = _Attempts(self._retry, "GET", path)
        while True:
            offset = sink.offset
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            response = self._request("GET", path, repository, headers, what)
            try:
                if offset and response.status == 206:
                    if not response.header("Content-Range").startswith(f"bytes {offset}-"):
                        raise DataLoss(f"{what}: {self.host} answered a range request with "
                                       f"the wrong range {response.header('Content-Range')!r}")
                elif offset:
                    # 200: the registry ignored Range; the body starts over.
                    sink.reset()
                self._stream(response, sink)
                return
            except _Retry as exc:
                wait = attempts.failed()
                if wait is None:
                    raise Unavailable(f"{what}: {self.host} kept dropping the connection: "
                                      f"{exc}") from None
                log.info("Download of %s from %s broke at %d bytes (%s); resuming",
                         digest, self.host, sink.offset, exc)
                self._watchdog.sleep(wait)
            finally:
                response.close()

    # ---- streaming ------------------------------------------------------

    def _stream(self, response: Response, sink: BlobSink) -> None:
        while True:
            try:
                data = response.read_chunk(_CHUNK)
            except _IO_ERRORS as exc:
                # urllib3 enforces Content-Length: a body cut short lands here.
                self._watchdog.raise_if_tripped()
                raise _Retry(_describe(exc)) from None
            self._watchdog.raise_if_tripped()
            if not data:
                return
            sink.write(memoryview(data))
            self._watchdog.progress(len(data))

    def _read_all(self, response: Response, limit: int, what: str) -> bytes:
        try:
            body = response.read(limit)
        except ValueError as exc:
            raise DataLoss(f"{what} from {self.host}: {exc}") from None
        except _IO_ERRORS as exc:
            self._watchdog.raise_if_tripped()
            raise Unavailable(f"{what}: reading from {self.host} failed: "
                              f"{_describe(exc)}") from None
        self._watchdog.progress(len(body))
        return body

    # ---- requests, retries, redirects -----------------------------------

    def _request(self, method: str, path: str, repository: str,
                 headers: Mapping[str, str], what: str) -> Response:
        """Send with auth, retries and redirects; return a 2xx response."""
        base = self._ensure_base(what)
        scope = auth.pull_scope(repository)
        refreshed_auth = False
        attempts = _Attempts(self._retry, method, base + path)
        while True:
            self._watchdog.raise_if_tripped()
            all_headers = dict(headers)
            authorization = self._authorization(scope, what)
            if authorization:
                all_headers["Authorization"] = authorization
            try:
                response = self._follow(method, base + path, all_headers)
            except _Retry as exc:
                wait = attempts.failed()
                if wait is None:
                    raise Unavailable(f"{what}: {self.host} failed {attempts.failures} times; "
                                      f"last: {exc}") from None
                self._watchdog.sleep(wait)
                continue
            if 200 <= response.status < 300:
                return response
            detail = self._error_detail(response)
            if response.status in _RETRY_STATUSES:
                wait = attempts.failed(response)
                if wait is None:
                    raise Unavailable(f"{what}: {self.host} answered {response.status} "
                                      f"{attempts.failures} times{detail}")
                self._watchdog.sleep(wait)
                continue
            if response.status == 401 and not refreshed_auth:
                # The token may lack this scope or have expired, or this
                # repository needs auth although /v2/ did not: learn the
                # challenge from this answer and try once more.
                refreshed_auth = True
                self._learn_challenge(response)
                with self._lock:
                    self._tokens.pop(scope, None)
                continue
            raise self._status_error(response.status, what, detail)

    def _follow(self, method: str, url: str, headers: dict[str, str]) -> Response:
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            same_origin = _origin(url) == origin
            if not same_origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            response = self._send(method, url, headers, insecure=self.insecure and same_origin)
            if response.status not in _REDIRECT_STATUSES:
                return response
            location = response.header("Location")
            self._drain(response)
            if not location:
                raise Unavailable(f"{self.host} answered {response.status} with no Location")
            url = urljoin(url, location)
        raise Unavailable(f"{self.host}: more than {MAX_REDIRECTS} redirects for {method} {url}")

    def _send(self, method: str, url: str, headers: Mapping[str, str], *,
              insecure: bool) -> Response:
        try:
            response = self._transport.request(method, url, headers, insecure=insecure,
                                               on_socket=self._watch)
        except _IO_ERRORS as exc:
            self._watchdog.raise_if_tripped()
            raise self._transport_error(exc, url, "registry") from None
        if response.status == 407:
            self._drain(response)
            raise self._proxy_refused(url, f"{response.status} {response.reason}")
        return response

    def _transport_error(self, exc: BaseException, url: str, role: str) -> Exception:
        """What a failed request means: a BusError to give up with, or
        ``_Retry``. ``role`` names the server ("registry", "token server")."""
        host = urlsplit(url).netloc
        root = _root_cause(exc)
        if isinstance(exc, ProxyError):
            proxy = self._transport.proxy_for(url)
            where = proxy.netloc if proxy is not None else "the proxy"
            if "407" in str(root):
                return self._proxy_refused(url, str(root))
            if isinstance(root, ConnectionRefusedError | socket.gaierror | NewConnectionError):
                return Unavailable(f"cannot reach proxy {where} (for {role} {host}): "
                                   f"{_describe(root)}; check HTTPS_PROXY/HTTP_PROXY")
            if not isinstance(root, ssl.SSLError):
                return _Retry(f"proxy {where}: {_describe(root)}")
        if isinstance(root, ssl.SSLCertVerificationError):
            return FailedPrecondition(
                f"TLS verification of {role} {host} failed ({root.verify_message}): put its "
                f"CA certificate in a certs.d directory for {host}, or mark it insecure in "
                "registries.conf")
        if isinstance(root, ssl.SSLError):
            if isinstance(root, ssl.SSLEOFError | ssl.SSLZeroReturnError):
                return _Retry(_describe(root))
            # A handshake failure does not heal on retry; the usual cause is
            # a plain-HTTP registry addressed over HTTPS.
            return FailedPrecondition(
                f"TLS handshake with {host} failed ({root.reason or root}); if it is a "
                "plain-HTTP registry, mark it insecure in registries.conf")
        if isinstance(root, ConnectionRefusedError | socket.gaierror):
            return Unavailable(f"cannot reach {role} {host}: {_describe(root)}")
        return _Retry(_describe(root))

    def _proxy_refused(self, url: str, why: str) -> FailedPrecondition:
        proxy = self._transport.proxy_for(url)
        where = proxy.netloc if proxy is not None else "the proxy"
        given = "the credentials in the proxy URL" if proxy is not None and proxy.username \
            else "no credentials (the proxy URL names no user)"
        return FailedPrecondition(
            f"proxy {where} refused the request for {urlsplit(url).netloc} with {given}: "
            f"{why[:200]}; check HTTPS_PROXY/HTTP_PROXY")

    def _watch(self, sock: socket.socket) -> Callable[[], None]:
        return self._watchdog.watch(sock)

    def _drain(self, response: Response) -> bytes:
        try:
            return response.read(_ERROR_BODY_LIMIT)
        except (ValueError, *_IO_ERRORS):
            response.close()
            return b""

    def _error_detail(self, response: Response) -> str:
        body = self._drain(response)
        try:
            errors = json.loads(body).get("errors") or []
            parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                     for e in errors if isinstance(e, dict)]
        except (ValueError, AttributeError):
            parts = []
        return f" ({'; '.join(parts)})" if parts else ""

    def _status_error(self, status: int, what: str, detail: str) -> BusError:
        if status == 404:
            return NotFound(f"{what} not found on {self.host}{detail}")
        if status == 401:
            if self._creds is None:
                return Unauthenticated(
                    f"{what}: registry {self.host} requires authentication and no "
                    f"credentials were given for it{detail}")
            return Unauthenticated(
                f"{what}: registry {self.host} rejected the credentials of "
                f"{self._creds.describe()}{detail}")
        if status == 403:
            who = self._creds.describe() if self._creds else "anonymous pulls"
            return PermissionDenied(f"{what}: registry {self.host} refuses {who}{detail}")
        return Unavailable(f"{what}: registry {self.host} answered {status}{detail}")

    # ---- ping and auth ---------------------------------------------------

    def _ensure_base(self, what: str) -> str:
        with self._lock:
            if self._base is not None:
                return self._base
        schemes = ("https", "http") if self.insecure else ("https",)
        last: BusError | None = None
        for scheme in schemes:
            base = f"{scheme}://{self.host}"
            # With a fallback left, a failure moves on at once: retrying TLS
            # against a plain-HTTP registry only wastes the backoff.
            attempts = 1 if scheme != schemes[-1] else self._retry.attempts
            try:
                response = self._ping(base, attempts)
            except (Unavailable, FailedPrecondition) as exc:
                last = exc
                continue
            with response:
                detail = self._error_detail(response)
                if response.status == 401:
                    self._learn_challenge(response)
                elif response.status == 404:
                    raise Unavailable(f"{self.host} has no registry API at /v2/ {detail}")
                elif not 200 <= response.status < 300:
                    raise self._status_error(response.status, f"{what}: ping", detail)
            with self._lock:
                self._base = base
            return base
        assert last is not None
        raise last

    def _ping(self, base: str, attempts: int) -> Response:
        tries = _Attempts(RetryPolicy(attempts, self._retry.base_delay, self._retry.max_delay,
                                      self._retry.jitter), "GET", f"{base}/v2/")
        while True:
            self._watchdog.raise_if_tripped()
            try:
                response = self._send("GET", f"{base}/v2/", {}, insecure=self.insecure)
            except _Retry as exc:
                wait = tries.failed()
                if wait is None:
                    raise Unavailable(f"cannot reach registry {self.host}: {exc}") from None
                self._watchdog.sleep(wait)
                continue
            if response.status in _RETRY_STATUSES:
                detail = self._error_detail(response)
                wait = tries.failed(response)
                if wait is None:
                    raise Unavailable(f"registry {self.host} answered {response.status} "
                                      f"{tries.failures} times{detail}")
                self._watchdog.sleep(wait)
                continue
            return response

    def _learn_challenge(self, response: Response) -> None:
        challenges = auth.parse_challenges(response.header("WWW-Authenticate"))
        by_scheme = {c.scheme: c for c in challenges}
        chosen = by_scheme.get("bearer") or by_scheme.get("basic")
        if chosen is not None:
            with self._lock:
                self._challenge = chosen

    def _authorization(self, scope: str, what: str) -> str | None:
        with self._lock:
            challenge = self._challenge
            token = self._tokens.get(scope)
        if challenge is None:
            return None
        creds = self._creds
        if challenge.scheme == "basic":
            if creds is None or not creds.has_basic:
                raise Unauthenticated(
                    f"{what}: registry {self.host} requires a username and password and none "
                    "were given for it")
            return creds.basic_header()
        if challenge.scheme != "bearer":
            raise Unauthenticated(f"{what}: registry {self.host} asks for unsupported "
                                  f"authentication scheme {challenge.scheme!r}")
        if creds is not None and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        if token is None or not token.fresh():
            token = self._fetch_token(challenge, scope, what)
            with self._lock:
                self._tokens[scope] = token
        return f"Bearer {token.value}"

    def _fetch_token(self, challenge: Challenge, scope: str, what: str) -> Token:
        try:
            request = auth.token_request(challenge, scope, self._creds)
        except ValueError as exc:
            raise Unavailable(f"{what}: {exc}") from None
        realm_host = urlsplit(request.url).netloc
        tries = _Attempts(self._retry, request.method, request.url)
        while True:
            self._watchdog.raise_if_tripped()
            try:
                # An insecure registry relaxes TLS for its own host only:
                # never for a token server elsewhere.
                response = self._transport.request(
                    request.method, request.url, request.headers, body=request.body,
                    insecure=self.insecure and realm_host == self.host, on_socket=self._watch)
            except _IO_ERRORS as exc:
                self._watchdog.raise_if_tripped()
                error = self._transport_error(exc, request.url, "token server")
                if not isinstance(error, _Retry):
                    raise error from None
                wait = tries.failed()
                if wait is None:
                    raise Unavailable(f"{what}: cannot reach token server {realm_host}: "
                                      f"{error}") from None
                self._watchdog.sleep(wait)
                continue
            with response:
                if response.status == 407:
                    raise self._proxy_refused(request.url,
                                              f"{response.status} {response.reason}")
                if response.status in _RETRY_STATUSES:
                    wait = tries.failed(response)
                    if wait is not None:
                        self._drain(response)
                        self._watchdog.sleep(wait)
                        continue
                if response.status in (401, 403):
                    who = self._creds.describe() if self._creds else "anonymous access"
                    raise Unauthenticated(f"{what}: token server {realm_host} rejected {who}"
                                          f"{self._error_detail(response)}")
                if response.status != 200:
                    raise Unavailable(f"{what}: token server {realm_host} answered "
                                      f"{response.status}{self._error_detail(response)}")
                try:
                    return auth.parse_token_response(response.read(_ERROR_BODY_LIMIT))
                except ValueError as exc:
                    raise Unavailable(f"{what}: token server {realm_host}: {exc}") from None
                except _IO_ERRORS as exc:
                    raise Unavailable(f"{what}: token server {realm_host}: "
                                      f"{_describe(exc)}") from None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _root_cause(exc: BaseException) -> BaseException:
    """The OS or TLS error under urllib3's wrappers (ProxyError, SSLError,
    ProtocolError and NewConnectionError carry it as an argument or cause)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLError | ConnectionRefusedError | socket.gaierror):
            return exc
        inner = next((a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)),
                     None) or exc.__cause__ or exc.__context__
        if inner is None:
            return exc
        exc = inner
    return exc


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
