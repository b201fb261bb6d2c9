"""Pulls through the HTTP proxy podvisor's environment names (issue 16).

A ``ForwardProxy`` (tests/proxyfixture.py) on 127.0.0.1 requires Basic
proxy credentials and records every request. A real podvisor daemon is
started with ``HTTP_PROXY``/``https_proxy`` naming it (credentials in the
URL) and ``NO_PROXY`` excluding one registry by host:port; the daemon
passes its environment on to its image worker, and the pulls go through
the CRI socket.

Go's proxy rules, which podvisor follows, never proxy loopback addresses,
so the docker-registry instances listen on this node's own non-loopback
address (that of the default route's interface); without one the module
is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import imagebuild as build
import pytest
from daemonlib import Daemon, write_config
from proxyfixture import ForwardProxy
from registry import ImageNode, Registry, free_port, start_registry

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import FailedPrecondition

PROXY_USERS = {"alice": "s3cret"}
PULL_DEADLINE = 60.0
CALL_DEADLINE = 5.0
_PROXY_VARS = {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"}


def node_address() -> str | None:
    """The IPv4 address of the default route's interface, if any."""
    try:
        routes = json.loads(subprocess.run(["ip", "-j", "route", "show", "default"],
                                           capture_output=True, check=True).stdout)
        dev = routes[0]["dev"]
        addrs = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", dev],
                                          capture_output=True, check=True).stdout)
        local: str = addrs[0]["addr_info"][0]["local"]
        return local
    except (OSError, subprocess.CalledProcessError, ValueError, LookupError):
        return None


ADDRESS = node_address()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ADDRESS is None, reason="no non-loopback IPv4 address: Go's proxy "
                       "rules never proxy loopback, so there is nothing to send through one"),
]


def clean_environ() -> dict[str, str]:
    """The runner's environment without any proxy variable of its own."""
    return {k: v for k, v in os.environ.items() if k.upper() not in _PROXY_VARS}


@dataclass
class World:
    base: Path
    plain: Registry
    tls: Registry
    excluded: Registry
    image: build.Image
    proxy: ForwardProxy
    daemon: Daemon


def start_daemon(base: Path, registries: list[Registry], env: dict[str, str]) -> Daemon:
    conf = base / "registries.conf"
    conf.write_text("".join(f'[[registry]]\nlocation = "{r.host}"\ninsecure = true\n\n'
                            for r in registries))
    policy = base / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    dbase = base / "d"
    dbase.mkdir()
    write_config(dbase, extra=(
        "[podvisor.image]\n"
        f'registries_conf = "{conf}"\n'
        f'signature_policy = "{policy}"\n'))
    return Daemon(dbase, env)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    assert ADDRESS is not None
    base = Path(tempfile.mkdtemp(prefix="pv-proxy-"))
    stops: list[Callable[[], Any]] = []
    try:
        image = build.build_image([build.busybox_layer()])
        registries = []
        for name, tls in (("plain", False), ("tls", True), ("excluded", False)):
            registry = start_registry(base / name, tls=tls, address=ADDRESS)
            stops.append(registry.stop)
            build.Pusher(registry.host, scheme=registry.scheme,
                         ssl_context=registry.ssl_context).push_image("app", "1", image)
            registries.append(registry)
        plain, tls_registry, excluded = registries
        proxy = ForwardProxy(users=dict(PROXY_USERS))
        stops.append(proxy.stop)
        url = proxy.url("alice", PROXY_USERS["alice"])
        env = {**clean_environ(), "HTTP_PROXY": url, "https_proxy": url,
               "NO_PROXY": f"example.invalid, .corp.internal,{excluded.host}"}
        daemon = start_daemon(base, registries, env)
        stops.append(daemon.stop)
        daemon.start()
        yield World(base, plain, tls_registry, excluded, image, proxy, daemon)
    finally:
        for stop in reversed(stops):
            stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def empty_store(world: World) -> Iterator[None]:
    """Each test starts and ends with no image (removed through the CRI)."""
    assert list_ids(world.daemon) == []
    yield
    for image_id in list_ids(world.daemon):
        world.daemon.images.RemoveImage(
            api.RemoveImageRequest(image=api.ImageSpec(image=image_id)), timeout=CALL_DEADLINE)
    assert list_ids(world.daemon) == []


def list_ids(daemon: Daemon) -> list[str]:
    response = daemon.images.ListImages(api.ListImagesRequest(), timeout=CALL_DEADLINE)
    return [image.id for image in response.images]


def pull(daemon: Daemon, name: str) -> str:
    request = api.PullImageRequest(image=api.ImageSpec(image=name))
    ref: str = daemon.images.PullImage(request, timeout=PULL_DEADLINE).image_ref
    return ref


def pull_error(daemon: Daemon, name: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        pull(daemon, name)
    return info.value.code(), info.value.details()


# ---- through the CRI socket ------------------------------------------------------


def test_http_registry_is_pulled_through_the_proxy(world: World) -> None:
    assert pull(world.daemon, f"{world.plain.host}/app:1") == world.image.id
    forwarded = world.proxy.targets(f"http://{world.plain.host}/v2/")
    assert all(method == "GET" for method, _ in forwarded)
    targets = [target for _, target in forwarded]
    assert any(target.endswith("/app/manifests/1") for target in targets), targets
    for blob in (world.image.config, *world.image.layers):
        assert any(target.endswith(f"/blobs/{blob.digest}") for target in targets), blob.digest
    assert world.proxy.refused == []


def test_tls_registry_is_pulled_through_a_connect_tunnel(world: World) -> None:
    assert pull(world.daemon, f"{world.tls.host}/app:1") == world.image.id
    seen = world.proxy.targets(world.tls.host)
    # Only tunnels: the proxy never sees a request of the registry's own.
    assert seen and {method for method, _ in seen} == {"CONNECT"}
    assert {target for _, target in seen} == {world.tls.host}


def test_no_proxy_excludes_a_registry_by_host_and_port(world: World) -> None:
    assert pull(world.daemon, f"{world.excluded.host}/app:1") == world.image.id
    assert world.proxy.targets(world.excluded.host) == []


def test_wrong_proxy_credentials_are_a_clear_error(world: World) -> None:
    # Forwarded requests carry the credentials each time. (A CONNECT tunnel
    # already open stays usable, as with any proxy: the worker's kept-alive
    # tunnel to the TLS registry is not asked again; a fresh one is, below.)
    world.proxy.users = {"alice": "changed"}
    try:
        code, message = pull_error(world.daemon, f"{world.plain.host}/app:1")
    finally:
        world.proxy.users = dict(PROXY_USERS)
    assert code == grpc.StatusCode.FAILED_PRECONDITION, message
    assert f"proxy {world.proxy.address} refused" in message
    assert "credentials in the proxy URL" in message
    assert PROXY_USERS["alice"] not in message
    assert world.proxy.refused


def test_a_proxy_that_is_down_is_a_clear_error(world: World) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    # Short: the run dir must stay under the unix socket path limit.
    base = Path(tempfile.mkdtemp(prefix="pv-pd-"))
    daemon = start_daemon(base, [world.plain], {**clean_environ(), "HTTP_PROXY": down,
                                                "HTTPS_PROXY": down})
    try:
        daemon.start()
        code, message = pull_error(daemon, f"{world.plain.host}/app:1")
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert code == grpc.StatusCode.UNAVAILABLE, message
    assert f"cannot reach proxy {down.removeprefix('http://')}" in message


# ---- the image pool on its own: verified TLS and bad settings -----------------------


def test_verified_tls_through_connect_with_certs_d(world: World, tmp_path: Path) -> None:
    url = world.proxy.url("alice", PROXY_USERS["alice"])
    node = ImageNode(tmp_path / "node", environ={"HTTPS_PROXY": url})
    certs = tmp_path / "node" / "certs.d" / world.tls.host
    certs.mkdir(parents=True)
    shutil.copy(world.tls.workdir / "tls.crt", certs / "ca.crt")
    before = len(world.proxy.targets(world.tls.host))
    assert node.pull(f"{world.tls.host}/app:1") == world.image.id
    assert len(world.proxy.targets(world.tls.host)) > before


def test_a_tunnel_refused_for_credentials_is_a_clear_error(world: World,
                                                            tmp_path: Path) -> None:
    node = ImageNode(tmp_path / "node", environ={
        "HTTPS_PROXY": world.proxy.url("alice", "wrong"),
        "HTTP_PROXY": world.proxy.url()})
    node.insecure(world.tls.host)
    with pytest.raises(FailedPrecondition) as info:
        node.pull(f"{world.tls.host}/app:1")
    assert f"proxy {world.proxy.address} refused" in info.value.message
    assert "wrong" not in info.value.message
    assert ("CONNECT", world.tls.host) in world.proxy.refused


def test_an_invalid_proxy_url_is_a_failed_precondition(world: World, tmp_path: Path) -> None:
    node = ImageNode(tmp_path / "node", environ={"HTTPS_PROXY": "http://proxy.example:99999"})
    with pytest.raises(FailedPrecondition) as info:
        node.pull(f"{world.tls.host}/app:1")
    assert "invalid proxy address 'http://proxy.example:99999' in HTTPS_PROXY" \
        in info.value.message
