"""The proxy variables read as Go's httpproxy reads them
(workers/image/proxy.py): which URL goes through which proxy."""

from __future__ import annotations

import pytest

from podvisor.proto.errors import FailedPrecondition
from podvisor.workers.image.proxy import Proxy, ProxyEnvironment, parse_proxy

PROXY = "http://proxy.corp:3128"


def via(no_proxy: str, url_host: str, port: int | None = None, scheme: str = "https") -> bool:
    env = ProxyEnvironment.from_environ({"HTTPS_PROXY": PROXY, "HTTP_PROXY": PROXY,
                                         "NO_PROXY": no_proxy})
    return env.proxy_for(scheme, url_host, port) is not None


@pytest.mark.parametrize(("no_proxy", "host", "port", "proxied"), [
    ("", "registry.example.com", None, True),
    # host: itself and its subdomains, not a longer name that merely ends alike
    ("example.com", "example.com", None, False),
    ("example.com", "registry.example.com", None, False),
    ("example.com", "badexample.com", None, True),
    # .domain and *.domain: subdomains only
    (".example.com", "registry.example.com", None, False),
    (".example.com", "example.com", None, True),
    ("*.example.com", "a.b.example.com", None, False),
    ("*.example.com", "example.com", None, True),
    # case and spaces do not matter
    (" Example.COM ", "REGISTRY.example.com", None, False),
    # host:port: that port only (the URL's port defaulting to the scheme's)
    ("example.com:5000", "example.com", 5000, False),
    ("example.com:5000", "example.com", 5001, True),
    ("example.com:443", "example.com", None, False),
    # IPs, IP:port, CIDR, IPv6
    ("10.1.2.3", "10.1.2.3", 5000, False),
    ("10.1.2.3", "10.1.2.4", 5000, True),
    ("10.1.2.3:5000", "10.1.2.3", 5000, False),
    ("10.1.2.3:5000", "10.1.2.3", 6000, True),
    ("10.0.0.0/8", "10.200.1.1", None, False),
    ("10.0.0.0/8", "11.0.0.1", None, True),
    ("fd00::/8", "[fd00::1]", None, False),
    ("[fd00::1]:5000", "[fd00::1]", 5000, False),
    ("10.0.0.0/8", "registry.example.com", None, True),
    # * switches the proxy off; entries after a bad one still count
    ("*", "anything.example", None, False),
    ("300.0.0.0/99,example.com", "example.com", None, False),
    # loopback and localhost are never proxied, as in Go
    ("", "localhost", 5000, False),
    ("", "127.0.0.1", 5000, False),
    ("", "127.9.9.9", None, False),
    ("", "[::1]", None, False),
])
def test_no_proxy_forms(no_proxy: str, host: str, port: int | None, proxied: bool) -> None:
    assert via(no_proxy, host, port) is proxied


def test_upper_case_wins_and_https_never_falls_back_to_http_proxy() -> None:
    env = ProxyEnvironment.from_environ({"HTTPS_PROXY": "http://upper:1",
                                         "https_proxy": "http://lower:2"})
    assert env.proxy_for("https", "r.example", None) == Proxy("http", "upper", 1)
    only_http = ProxyEnvironment.from_environ({"HTTP_PROXY": PROXY})
    assert only_http.proxy_for("https", "r.example", None) is None
    assert only_http.proxy_for("http", "r.example", None) is not None
    lower = ProxyEnvironment.from_environ({"https_proxy": PROXY, "no_proxy": "r.example"})
    assert lower.proxy_for("https", "r.example", None) is None


def test_proxy_url_forms_and_credentials() -> None:
    assert parse_proxy("proxy.corp:3128", "HTTP_PROXY") == Proxy("http", "proxy.corp", 3128)
    assert parse_proxy("https://proxy.corp", "HTTPS_PROXY") == Proxy("https", "proxy.corp", 443)
    with_creds = parse_proxy("http://al%40ce:p%3Ass@proxy.corp:8080", "HTTPS_PROXY")
    assert (with_creds.username, with_creds.password) == ("al@ce", "p:ss")
    assert with_creds.headers() == {"Proxy-Authorization": "Basic YWxAY2U6cDpzcw=="}
    assert "p:ss" not in repr(with_creds) and with_creds.url == "http://proxy.corp:8080"
    assert parse_proxy("http://proxy.corp", "HTTP_PROXY").headers() == {}


@pytest.mark.parametrize(("value", "fragment"), [
    ("http://proxy.corp:99999", "Port out of range"),
    ("http://proxy.corp:0", "port 0"),
    ("socks5://proxy.corp:1080", "SOCKS proxies are not supported"),
    ("ftp://proxy.corp", "must be http or https"),
    ("http://", "names no host"),
    ("http://proxy.corp/path", "no path"),
    ("http://[::1", "invalid proxy address"),
])
def test_bad_proxy_urls_fail_every_lookup(value: str, fragment: str) -> None:
    env = ProxyEnvironment.from_environ({"HTTPS_PROXY": value})
    with pytest.raises(FailedPrecondition) as info:
        env.proxy_for("http", "r.example", None)  # the other scheme too, as Go
    assert "HTTPS_PROXY" in info.value.message
    assert fragment in info.value.message


def test_no_variables_means_direct() -> None:
    assert ProxyEnvironment.from_environ({}).proxy_for("https", "r.example", None) is None
