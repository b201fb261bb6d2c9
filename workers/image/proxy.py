"""Which proxy, if any, a registry URL goes through: the worker's environment
read as Go's ``golang.org/x/net/http/httpproxy`` reads it (CRI-O and
containerd use that package, so a node's proxy settings mean the same here).

Variables
    ``HTTPS_PROXY`` for https URLs, ``HTTP_PROXY`` for http URLs (an https
    URL never falls back to ``HTTP_PROXY``), ``NO_PROXY`` for exceptions;
    the upper-case name wins over the lower-case one when both are set.
    An empty value means no proxy.

Proxy URL
    ``[http|https]://[user[:password]@]host[:port]``; a value with no scheme
    is taken as ``http://<value>``. The port defaults to the scheme's. The
    credentials become a Basic ``Proxy-Authorization`` header, sent on the
    CONNECT of an https registry and on every request to an http one.
    SOCKS proxies are refused (no SOCKS client is shipped). A value that
    does not parse fails every pull with FAILED_PRECONDITION naming the
    variable, as Go's ``ProxyFunc`` fails every request: guessing which
    requests it would not have touched is worse than saying so.

NO_PROXY (comma-separated, case-insensitive, each entry one of)
    ``*`` (no proxy at all); an IP (``10.1.2.3``, ``[::1]``) or ``IP:port``;
    a CIDR (``10.0.0.0/8``); ``host`` (that host and its subdomains),
    ``.domain`` or ``*.domain`` (subdomains only), each optionally
    ``:port``. An entry with a port matches only that port (the URL's port
    defaulting to the scheme's). Like Go, ``localhost`` and loopback
    addresses never go through a proxy.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ...proto.errors import FailedPrecondition

DEFAULT_PORTS = {"http": 80, "https": 443}
# Echoed values are cut to this many characters in error messages.
_ECHO = 120

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Proxy:
    """One proxy server; ``url`` carries no credentials (safe to log)."""

    scheme: str
    host: str
    port: int
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def headers(self) -> dict[str, str]:
        """``Proxy-Authorization`` when the URL named a user."""
        if not self.username:
            return {}
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Proxy-Authorization": f"Basic {token}"}


def parse_proxy(value: str, variable: str) -> Proxy:
    """A proxy URL as ``variable`` gave it; FailedPrecondition if it is not one."""
    def bad(why: str) -> FailedPrecondition:
        return FailedPrecondition(
            f"invalid proxy address {value[:_ECHO]!r} in {variable}: {why}")

    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:  # a bad port or IPv6 literal
        raise bad(str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme.startswith("socks"):
        raise bad("SOCKS proxies are not supported; use an HTTP or HTTPS proxy")
    if scheme not in DEFAULT_PORTS:
        raise bad(f"the scheme must be http or https, not {scheme[:_ECHO]!r}")
    host = parts.hostname or ""
    if not host or any(c.isspace() for c in host):
        raise bad("it names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad("a proxy URL has no path, query or fragment")
    if port == 0:
        raise bad("port 0 is not a port")
    return Proxy(scheme, host, port or DEFAULT_PORTS[scheme],
                 unquote(parts.username or ""), unquote(parts.password or ""))


@dataclass(frozen=True)
class _DomainRule:
    suffix: str       # always starts with "."
    exact_too: bool   # "example.com" also matches the host example.com itself
    port: int | None

    def matches(self, host: str, port: int) -> bool:
        named = host.endswith(self.suffix) or (self.exact_too and host == self.suffix[1:])
        return named and (self.port is None or self.port == port)


@dataclass(frozen=True)
class NoProxy:
    """NO_PROXY parsed once (see the module docstring for the forms)."""

    everything: bool = False
    networks: tuple[IPNetwork, ...] = ()
    addresses: tuple[tuple[IPAddress, int | None], ...] = ()
    domains: tuple[_DomainRule, ...] = ()

    @classmethod
    def parse(cls, value: str) -> NoProxy:
        networks: list[IPNetwork] = []
        addresses: list[tuple[IPAddress, int | None]] = []
        domains: list[_DomainRule] = []
        for raw in value.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                return cls(everything=True)
            if "/" in entry:
                # Go skips what is neither a CIDR nor a host.
                with contextlib.suppress(ValueError):
                    networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            host, port = _split_host_port(entry)
            address = _ip(host)
            if address is not None:
                addresses.append((address, port))
                continue
            if host.startswith("*."):
                host = host[1:]
            if not host or host == ".":
                continue
            exact_too = not host.startswith(".")
            domains.append(_DomainRule(host if not exact_too else f".{host}", exact_too, port))
        return cls(False, tuple(networks), tuple(addresses), tuple(domains))

    def excludes(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        host = host.lower().strip("[]")
        address = _ip(host)
        if address is not None:
            if any(address in net for net in self.networks):
                return True
            if any(address == a and (p is None or p == port) for a, p in self.addresses):
                return True
        return any(rule.matches(host, port) for rule in self.domains)


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """``host[:port]`` / ``[v6][:port]`` / bare v6; a port that does not
    parse leaves the entry whole, as Go's SplitHostPort failing does."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            return host, int(rest[1:])
        return host, None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class ProxyEnvironment:
    """The proxy settings of this process, read once at worker start."""

    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: NoProxy = NoProxy()
    # Set when a variable did not parse; every lookup then raises it.
    error: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProxyEnvironment:
        def get(name: str) -> tuple[str, str]:
            for key in (name, name.lower()):
                value = environ.get(key, "")
                if value:
                    return key, value
            return name, ""

        no_proxy = NoProxy.parse(get("NO_PROXY")[1])
        proxies: dict[str, Proxy | None] = {}
        try:
            for scheme in ("http", "https"):
                variable, value = get(f"{scheme.upper()}_PROXY")
                proxies[scheme] = parse_proxy(value, variable) if value else None
        except FailedPrecondition as exc:
            return cls(no_proxy=no_proxy, error=exc.message)
        return cls(proxies["http"], proxies["https"], no_proxy)

    def proxy_for(self, scheme: str, host: str, port: int | None) -> Proxy | None:
        """The proxy for a request to ``scheme://host[:port]``, or None."""
        if self.error:
            raise FailedPrecondition(self.error)
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None:
            return None
        host = host.lower().strip("[]")
        if host == "localhost":
            return None
        address = _ip(host)
        if address is not None and address.is_loopback:
            return None
        if self.no_proxy.excludes(host, port or DEFAULT_PORTS[scheme]):
            return None
        return proxy
