"""Registry authentication and TLS against the real docker-registry.

- htpasswd (Basic) registry: no, wrong and right credentials, in every CRI
  AuthConfig form;
- token registry: docker-registry's ``auth: token`` trusting a signer made
  by openssl for this run, with a token endpoint from tests/registry.py;
- TLS registry with a self-signed certificate: trusted through a certs.d
  directory, refused without one.
"""

from __future__ import annotations

import base64
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import imagebuild as build
import pytest
from registry import ImageNode, Registry, TokenIssuer, start_registry

from podvisor.proto.errors import FailedPrecondition
from podvisor.workers.image.errors import Unauthenticated

USERS = {"alice": "wonderland"}


@pytest.fixture(scope="module")
def image() -> build.Image:
    return build.build_image([build.busybox_layer()])


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pv-auth-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def basic_registry(workdir: Path, image: build.Image) -> Iterator[Registry]:
    registry = start_registry(workdir / "basic", users=USERS)
    try:
        build.Pusher(registry.host, username="alice", password="wonderland").push_image(
            "private/app", "1", image)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def token_issuer(workdir: Path) -> Iterator[TokenIssuer]:
    issuer = TokenIssuer(workdir / "issuer", USERS, refresh_tokens={"refresh-alice": "alice"})
    yield issuer
    issuer.stop()


@pytest.fixture(scope="module")
def token_registry(workdir: Path, token_issuer: TokenIssuer,
                   image: build.Image) -> Iterator[Registry]:
    registry = start_registry(workdir / "token", token=token_issuer)
    try:
        build.Pusher(registry.host, username="alice", password="wonderland").push_image(
            "private/app", "1", image)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def tls_registry(workdir: Path, image: build.Image) -> Iterator[Registry]:
    registry = start_registry(workdir / "tls", tls=True)
    try:
        build.Pusher(registry.host, scheme="https",
                     ssl_context=registry.ssl_context).push_image("app", "1", image)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def tls_token(workdir: Path, image: build.Image) -> Iterator[tuple[Registry, TokenIssuer]]:
    """A plain-HTTP registry whose token server speaks TLS on another port."""
    issuer = TokenIssuer(workdir / "tls-issuer", USERS, tls=True)
    registry = start_registry(workdir / "tls-token", token=issuer)
    try:
        assert issuer.tls_cert is not None
        build.Pusher(registry.host, username="alice", password="wonderland",
                     ssl_context=ssl.create_default_context(cafile=str(issuer.tls_cert))
                     ).push_image("private/app", "1", image)
        yield registry, issuer
    finally:
        registry.stop()
        issuer.stop()


def node_for(tmp_path: Path, registry: Registry) -> ImageNode:
    node = ImageNode(tmp_path / "node")
    node.insecure(registry.host)
    return node


# ---- Basic ------------------------------------------------------------------


def test_basic_auth_without_credentials_is_refused(tmp_path: Path, basic_registry: Registry,
                                                   image: build.Image) -> None:
    node = node_for(tmp_path, basic_registry)
    with pytest.raises(Unauthenticated) as info:
        node.pull(f"{basic_registry.host}/private/app:1")
    assert "requires a username and password" in info.value.message
    assert basic_registry.host in info.value.message
    assert node.blobs == []


def test_basic_auth_with_wrong_password_names_the_user(tmp_path: Path,
                                                       basic_registry: Registry) -> None:
    node = node_for(tmp_path, basic_registry)
    with pytest.raises(Unauthenticated) as info:
        node.pull(f"{basic_registry.host}/private/app:1",
                  auth={"username": "alice", "password": "looking-glass"})
    assert "rejected the credentials of user 'alice'" in info.value.message
    assert "looking-glass" not in info.value.message


@pytest.mark.parametrize("form", ["fields", "auth"])
def test_basic_auth_with_right_credentials(tmp_path: Path, basic_registry: Registry,
                                           image: build.Image, form: str) -> None:
    node = node_for(tmp_path, basic_registry)
    auth = ({"username": "alice", "password": "wonderland"} if form == "fields"
            else {"auth": base64.b64encode(b"alice:wonderland").decode()})
    auth["server_address"] = basic_registry.host
    assert node.pull(f"{basic_registry.host}/private/app:1", auth=auth) == image.id


def test_credentials_for_another_registry_are_not_sent(tmp_path: Path,
                                                       basic_registry: Registry) -> None:
    node = node_for(tmp_path, basic_registry)
    with pytest.raises(Unauthenticated, match="requires a username and password"):
        node.pull(f"{basic_registry.host}/private/app:1",
                  auth={"username": "alice", "password": "wonderland",
                        "server_address": "other.example.com"})


# ---- Bearer tokens ----------------------------------------------------------


def test_token_auth_with_credentials(tmp_path: Path, token_registry: Registry,
                                     token_issuer: TokenIssuer, image: build.Image) -> None:
    node = node_for(tmp_path, token_registry)
    before = len(token_issuer.requests)
    assert node.pull(f"{token_registry.host}/private/app:1",
                     auth={"username": "alice", "password": "wonderland"}) == image.id
    ours = token_issuer.requests[before:]
    assert ours and all(r["user"] == "alice" and r["granted"] for r in ours)
    assert all(r["service"] == TokenIssuer.service for r in ours)
    # One token serves every request of the pull (cached per scope).
    assert len(ours) == 1


def test_token_auth_anonymous_is_refused_clearly(tmp_path: Path,
                                                 token_registry: Registry) -> None:
    node = node_for(tmp_path, token_registry)
    with pytest.raises(Unauthenticated) as info:
        node.pull(f"{token_registry.host}/private/app:1")
    assert "requires authentication and no credentials were given" in info.value.message
    assert node.blobs == []


def test_token_auth_with_wrong_password(tmp_path: Path, token_registry: Registry) -> None:
    node = node_for(tmp_path, token_registry)
    with pytest.raises(Unauthenticated) as info:
        node.pull(f"{token_registry.host}/private/app:1",
                  auth={"username": "alice", "password": "nope"})
    assert "token server" in info.value.message
    assert "rejected user 'alice'" in info.value.message


def test_registry_token_is_used_as_is(tmp_path: Path, token_registry: Registry,
                                      token_issuer: TokenIssuer, image: build.Image) -> None:
    token = token_issuer.pull_token("alice", "private/app")
    node = node_for(tmp_path, token_registry)
    before = len(token_issuer.requests)
    assert node.pull(f"{token_registry.host}/private/app:1",
                     auth={"registry_token": token}) == image.id
    assert len(token_issuer.requests) == before


def test_identity_token_is_exchanged_at_the_token_endpoint(
        tmp_path: Path, token_registry: Registry, token_issuer: TokenIssuer,
        image: build.Image) -> None:
    node = node_for(tmp_path, token_registry)
    before = len(token_issuer.requests)
    assert node.pull(f"{token_registry.host}/private/app:1",
                     auth={"identity_token": "refresh-alice"}) == image.id
    [request] = token_issuer.requests[before:]
    assert request["oauth"] and request["user"] == "alice"
    assert request["service"] == TokenIssuer.service
    with pytest.raises(Unauthenticated, match="rejected an identity token"):
        node_for(tmp_path / "other", token_registry).pull(
            f"{token_registry.host}/private/app:1", auth={"identity_token": "stolen"})


# ---- TLS --------------------------------------------------------------------


def test_an_insecure_registry_does_not_relax_tls_for_its_token_server(
        tmp_path: Path, tls_token: tuple[Registry, TokenIssuer], image: build.Image) -> None:
    registry, issuer = tls_token
    node = node_for(tmp_path, registry)  # the registry is insecure, its token server not
    alice = {"username": "alice", "password": "wonderland"}
    with pytest.raises(FailedPrecondition) as info:
        node.pull(f"{registry.host}/private/app:1", auth=alice)
    assert f"TLS verification of token server {issuer.host} failed" in info.value.message
    assert node.blobs == []
    assert issuer.tls_cert is not None
    certs = tmp_path / "node" / "certs.d" / issuer.host
    certs.mkdir(parents=True)
    shutil.copy(issuer.tls_cert, certs / "ca.crt")
    assert node.pull(f"{registry.host}/private/app:1", auth=alice) == image.id


def test_tls_registry_trusted_through_certs_d(tmp_path: Path, tls_registry: Registry,
                                              image: build.Image) -> None:
    node = ImageNode(tmp_path / "node")  # no registries.conf: TLS is required
    certs = tmp_path / "node" / "certs.d" / tls_registry.host
    certs.mkdir(parents=True)
    shutil.copy(tls_registry.workdir / "tls.crt", certs / "ca.crt")
    assert node.pull(f"{tls_registry.host}/app:1") == image.id


def test_tls_registry_with_unknown_ca_is_refused_until_certs_d_has_it(
        tmp_path: Path, tls_registry: Registry, image: build.Image) -> None:
    node = ImageNode(tmp_path / "node")
    with pytest.raises(FailedPrecondition) as info:
        node.pull(f"{tls_registry.host}/app:1")
    assert "TLS verification" in info.value.message
    assert "certs.d" in info.value.message
    # The CA is picked up by the same worker, without a restart.
    certs = tmp_path / "node" / "certs.d" / tls_registry.host
    certs.mkdir(parents=True)
    shutil.copy(tls_registry.workdir / "tls.crt", certs / "ca.crt")
    assert node.pull(f"{tls_registry.host}/app:1") == image.id


def test_insecure_registry_accepts_an_unverified_certificate(tmp_path: Path,
                                                             tls_registry: Registry,
                                                             image: build.Image) -> None:
    node = node_for(tmp_path, tls_registry)
    assert node.pull(f"{tls_registry.host}/app:1") == image.id


def test_plain_http_registry_needs_insecure(tmp_path: Path, basic_registry: Registry) -> None:
    node = ImageNode(tmp_path / "node")
    with pytest.raises(FailedPrecondition) as info:
        node.pull(f"{basic_registry.host}/private/app:1")
    assert f"TLS handshake with {basic_registry.host} failed" in info.value.message
    assert "mark it insecure" in info.value.message
