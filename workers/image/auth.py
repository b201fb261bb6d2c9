"""Registry authentication: credentials, challenges, token requests.

Pure logic, no I/O: registry.py sends what this module builds.

Credentials come from the CRI ``AuthConfig`` of one PullImage call (the
kubelet picked them for the image's registry):

- ``username`` + ``password``, or ``auth`` = base64("user:password");
- ``identity_token``: an OAuth2 refresh token, exchanged at the token
  endpoint with a POST (grant_type=refresh_token);
- ``registry_token``: a bearer token sent to the registry as it is.

Challenges (``WWW-Authenticate``, RFC 7235) choose the scheme: ``Basic``
sends the credentials on every request; ``Bearer`` (the distribution token
spec) asks ``realm`` for a token for ``service`` and
``scope=repository:<name>:pull``, with Basic credentials when we have
them and anonymously otherwise.

Invariant: credentials are never sent to a host they were not meant for;
registry.py decides which host that is, and drops the ``Authorization``
header on redirects to another origin.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from ...proto import api_pb2 as api
from ...proto.errors import InvalidArgument, shorten

# A token without expires_in is good for 60 s (distribution token spec).
DEFAULT_TOKEN_LIFETIME = 60.0
_TOKEN_MARGIN = 5.0


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    server_address: str = ""

    @property
    def has_basic(self) -> bool:
        return bool(self.username or self.password)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def describe(self) -> str:
        """Who these credentials are, without any secret."""
        if self.registry_token:
            return "a registry token"
        if self.identity_token:
            return f"an identity token{f' for {self.username}' if self.username else ''}"
        return f"user {self.username!r}"

    def matches_host(self, host: str) -> bool:
        """True when ``server_address`` is unset or names ``host``."""
        return not self.server_address or server_host(self.server_address) == host


def server_host(address: str) -> str:
    """The registry host (``host[:port]``) a CRI ``server_address`` names, a
    bare host or a URL; InvalidArgument when it is neither."""
    if "://" not in address:
        address = f"//{address}"
    try:
        netloc = urlsplit(address).netloc
    except ValueError as exc:  # "Invalid IPv6 URL", NFKC-unsafe characters
        raise InvalidArgument(f"auth.server_address {shorten(address.removeprefix('//'))} "
                              f"is not a registry address: {exc}") from None
    # Docker Hub's credentials are keyed by its legacy index URL.
    if netloc in ("index.docker.io", "registry-1.docker.io"):
        netloc = "docker.io"
    return netloc


def credentials_from_cri(auth: api.AuthConfig | None) -> Credentials | None:
    """Build credentials from a PullImageRequest's AuthConfig."""
    if auth is None:
        return None
    username, password = auth.username, auth.password
    encoded = auth.auth
    if encoded and not (username or password):
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        # binascii.Error and UnicodeDecodeError are ValueErrors, and so is
        # what b64decode raises for a str with non-ASCII characters.
        except ValueError:
            raise InvalidArgument("auth.auth is not base64 of 'username:password'") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise InvalidArgument("auth.auth must decode to 'username:password'")
    server_address = auth.server_address
    if server_address:
        server_host(server_address)  # refused here, with the call, not mid-pull
    creds = Credentials(username=username, password=password,
                        identity_token=auth.identity_token,
                        registry_token=auth.registry_token,
                        server_address=server_address)
    if not (creds.has_basic or creds.identity_token or creds.registry_token):
        return None
    return creds


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: Mapping[str, str]


_TOKEN68 = r"[A-Za-z0-9._~+/-]+=*"
_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*(?:,|$)')
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9_.-]*)(?:\s+|$)")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into its challenges, in order."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        if header[pos] in ", ":
            pos += 1
            continue
        match = _SCHEME.match(header, pos)
        if match is None:
            break
        scheme = match.group(1).lower()
        pos = match.end()
        params: dict[str, str] = {}
        while pos < len(header):
            param = _PARAM.match(header, pos)
            if param is None:
                token = re.compile(_TOKEN68).match(header, pos)
                if token is not None and not params:
                    pos = token.end()
                break
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            pos = param.end()
        challenges.append(Challenge(scheme, params))
    return challenges


@dataclass(frozen=True)
class TokenRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None


def token_request(challenge: Challenge, scope: str, creds: Credentials | None) -> TokenRequest:
    """The request that obtains a bearer token for ``scope``."""
    realm = challenge.params.get("realm", "")
    if urlsplit(realm).scheme not in ("http", "https"):
        raise ValueError(f"the registry's token realm {realm!r} is not an http(s) URL")
    service = challenge.params.get("service", "")
    if creds is not None and creds.identity_token:
        form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                "client_id": "podvisor", "scope": scope}
        if service:
            form["service"] = service
        return TokenRequest("POST", realm,
                            {"Content-Type": "application/x-www-form-urlencoded"},
                            urlencode(form).encode())
    query = {"scope": scope}
    if service:
        query["service"] = service
    separator = "&" if "?" in realm else "?"
    headers = {}
    if creds is not None and creds.has_basic:
        headers["Authorization"] = creds.basic_header()
    return TokenRequest("GET", f"{realm}{separator}{urlencode(query)}", headers, None)


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # CLOCK_MONOTONIC

    def fresh(self) -> bool:
        return time.monotonic() < self.expires_at - _TOKEN_MARGIN


def parse_token_response(body: bytes) -> Token:
    """Read ``{"token"|"access_token", "expires_in"}`` from a token endpoint."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("the token endpoint did not answer JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the token endpoint answered JSON that is not an object")
    value = data.get("token") or data.get("access_token")
    if not isinstance(value, str) or not value:
        raise ValueError("the token endpoint's answer has no token")
    lifetime = data.get("expires_in")
    seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 \
        else DEFAULT_TOKEN_LIFETIME
    return Token(value, time.monotonic() + seconds)


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"
