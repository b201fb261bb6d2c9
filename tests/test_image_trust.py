"""Signature policy (containers-policy.json) on pulls from the real docker-registry.

One registry per module holds busybox images, some signed the way cosign
signs them: a key pair made here, a simple-signing payload uploaded as a
blob, its signature in the annotation of an OCI manifest at the tag
``sha256-<manifest hex>.sig`` (tests/imagebuild.py). Each test gets its own
node, whose policy file it writes, and calls the image ops directly.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagebuild as build
import pytest
from registry import ImageNode, Registry, free_port, start_registry

from podvisor.proto.codes import Code
from podvisor.proto.errors import BusError, FailedPrecondition
from podvisor.workers.image.errors import SignatureRejected
from podvisor.workers.image.manifest import this_platform

ARCH = this_platform().architecture
OTHER_ARCH = "arm64" if ARCH != "arm64" else "amd64"


@dataclass
class World:
    registry: Registry
    image: build.Image
    other: build.Image        # a second image, whose digest a bad signature names
    index: build.Index
    keys: dict[str, build.SigningKey]
    key_files: dict[str, Path]

    @property
    def host(self) -> str:
        return self.registry.host

    def ref(self, repo: str, tag: str = "1") -> str:
        return f"{self.host}/{repo}:{tag}"

    def here(self) -> build.Image:
        return next(i for i in self.index.images
                    if json.loads(i.config.data)["architecture"] == ARCH)


def sign(pusher: build.Pusher, repo: str, attached_to: str, *, key: build.SigningKey,
         identity: str, claims: str | None = None) -> None:
    """Attach to ``attached_to`` a signature of ``key`` claiming ``identity``
    and the digest ``claims`` (by default the one it is attached to)."""
    data = build.payload(identity, claims or attached_to)
    pusher.push_signatures(repo, attached_to, [(data, key.sign(data))])


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="pv-trust-"))
    registry = start_registry(base / "registry")
    try:
        busybox = build.busybox_layer()
        image = build.build_image([busybox], labels={"signed": "maybe"})
        other = build.build_image([busybox], labels={"signed": "other"})
        here = build.build_image([busybox], labels={"arch": ARCH})
        there = build.build_image([build.Layer().file("other", b"arch")], arch=OTHER_ARCH)
        index = build.build_index([(there, OTHER_ARCH, ""), (here, ARCH, "")])
        keys = {kind: build.SigningKey(kind) for kind in ("ecdsa", "rsa", "ed25519")}
        keys["other"] = build.SigningKey("ecdsa")
        key_files = {}
        for name, key in keys.items():
            key_files[name] = base / f"{name}.pub"
            key_files[name].write_bytes(key.public_pem())

        host = registry.host
        pusher = build.Pusher(host)
        digest = image.manifest.digest
        for repo in ("signed/app", "unsigned/app", "otherkey/app", "wrongdigest/app",
                     "identity/app", "keys/rsa", "keys/ed25519"):
            pusher.push_image(repo, "1", image)
        pusher.push_image("other/app", "1", other)
        sign(pusher, "signed/app", digest, key=keys["ecdsa"], identity=f"{host}/signed/app:1")
        sign(pusher, "otherkey/app", digest, key=keys["other"],
             identity=f"{host}/otherkey/app:1")
        sign(pusher, "wrongdigest/app", digest, key=keys["ecdsa"],
             identity=f"{host}/wrongdigest/app:1", claims=other.manifest.digest)
        # Signed for tag 2, pulled as tag 1.
        sign(pusher, "identity/app", digest, key=keys["ecdsa"], identity=f"{host}/identity/app:2")
        for kind in ("rsa", "ed25519"):
            sign(pusher, f"keys/{kind}", digest, key=keys[kind], identity=f"{host}/keys/{kind}:1")

        # Multi-arch: cosign's default (the index), cosign --recursive or
        # containers/image (the platform manifest only), and none.
        for repo in ("index/signed", "index/recursive", "index/unsigned"):
            pusher.push_index(repo, "1", index)
        sign(pusher, "index/signed", index.index.digest, key=keys["ecdsa"],
             identity=f"{host}/index/signed:1")
        sign(pusher, "index/recursive", here.manifest.digest, key=keys["ecdsa"],
             identity=f"{host}/index/recursive:1")
        yield World(registry, image, other, index, keys, key_files)
    finally:
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def node(tmp_path: Path, world: World) -> ImageNode:
    n = ImageNode(tmp_path / "node")
    n.insecure(world.host)
    return n


def sigstore(key_file: Path, **extra: Any) -> dict[str, Any]:
    return {"type": "sigstoreSigned", "keyPath": str(key_file), **extra}


def only_signed(world: World, *requirements: dict[str, Any]) -> dict[str, Any]:
    """Reject everything but this registry, which needs ``requirements``."""
    return {"default": [{"type": "reject"}],
            "transports": {"docker": {world.host: list(requirements)}}}


def refused(node: ImageNode, name: str) -> SignatureRejected:
    with pytest.raises(SignatureRejected) as caught:
        node.pull(name)
    error = caught.value
    # What the kubelet keys on (errors.py): UNKNOWN and the CRI's prefix.
    assert error.code == Code.UNKNOWN
    assert error.message.startswith("SignatureValidationFailed: ")
    assert node.image["signature_policy"] in error.message
    assert node.blobs == [] and node.list() == [], "a refused pull left something behind"
    return error


# ---- sigstoreSigned ------------------------------------------------------------


def test_signed_image_pulls(node: ImageNode, world: World,
                            caplog: pytest.LogCaptureFixture) -> None:
    node.policy(only_signed(world, sigstore(world.key_files["ecdsa"])))
    caplog.set_level(logging.INFO, logger="podvisor.workers.image.trust")
    name = world.ref("signed/app")
    assert node.pull(name) == world.image.id
    assert node.status(name).image.repo_tags == [name]
    assert f"verified with key {world.key_files['ecdsa']}" in caplog.text
    # The signature manifest and payload are not part of the image.
    assert set(node.blobs) == {world.image.id, world.image.manifest.digest,
                               *(b.digest for b in world.image.layers)}


def test_key_data_and_key_paths_are_accepted(node: ImageNode, world: World) -> None:
    pem = world.key_files["ecdsa"].read_bytes()
    node.policy(only_signed(world, {"type": "sigstoreSigned",
                                    "keyData": base64.b64encode(pem).decode()}))
    assert node.pull(world.ref("signed/app")) == world.image.id
    node.remove(world.ref("signed/app"))
    node.policy(only_signed(world, {"type": "sigstoreSigned", "keyPaths": [
        str(world.key_files["other"]), str(world.key_files["ecdsa"])]}))
    assert node.pull(world.ref("signed/app")) == world.image.id


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_rsa_and_ed25519_keys(node: ImageNode, world: World, kind: str) -> None:
    node.policy(only_signed(world, sigstore(world.key_files[kind])))
    assert node.pull(world.ref(f"keys/{kind}")) == world.image.id


def test_unsigned_image_is_refused(node: ImageNode, world: World) -> None:
    key = world.key_files["ecdsa"]
    node.policy(only_signed(world, sigstore(key)))
    error = refused(node, world.ref("unsigned/app"))
    assert f"image {world.ref('unsigned/app')} rejected by " \
           f"{node.image['signature_policy']}: no valid sigstore signature for key {key}" \
           in error.message
    assert f"sha256-{world.image.manifest.digest[7:]}.sig" in error.message


def test_image_signed_with_another_key_is_refused(node: ImageNode, world: World) -> None:
    key = world.key_files["ecdsa"]
    node.policy(only_signed(world, sigstore(key)))
    error = refused(node, world.ref("otherkey/app"))
    assert f"not made by key {key}" in error.message


def test_signature_naming_another_digest_is_refused(node: ImageNode, world: World) -> None:
    node.policy(only_signed(world, sigstore(world.key_files["ecdsa"])))
    error = refused(node, world.ref("wrongdigest/app"))
    assert f"it signs {world.other.manifest.digest}, not {world.image.manifest.digest}" \
        in error.message


def test_signed_identity_decides_which_claims_count(node: ImageNode, world: World) -> None:
    key = world.key_files["ecdsa"]
    name = world.ref("identity/app")
    node.policy(only_signed(world, sigstore(key)))  # matchRepoDigestOrExact
    error = refused(node, name)
    assert f"it is for '{world.ref('identity/app', '2')}'" in error.message
    node.policy(only_signed(world, sigstore(key, signedIdentity={"type": "matchExact"})))
    refused(node, name)
    node.policy(only_signed(world, sigstore(key, signedIdentity={"type": "matchRepository"})))
    assert node.pull(name) == world.image.id


def test_digest_pull_accepts_a_tag_signature_of_the_repository(node: ImageNode,
                                                               world: World) -> None:
    key = world.key_files["ecdsa"]
    node.policy(only_signed(world, sigstore(key)))
    by_digest = f"{world.host}/identity/app@{world.image.manifest.digest}"
    assert node.pull(by_digest) == world.image.id
    node.remove(by_digest)
    node.policy(only_signed(world, sigstore(key, signedIdentity={"type": "matchExact"})))
    refused(node, by_digest)


def test_index_signed_by_cosign_pulls_this_platform(node: ImageNode, world: World) -> None:
    node.policy(only_signed(world, sigstore(world.key_files["ecdsa"])))
    assert node.pull(world.ref("index/signed")) == world.here().id


def test_index_signed_per_platform_pulls(node: ImageNode, world: World) -> None:
    node.policy(only_signed(world, sigstore(world.key_files["ecdsa"])))
    assert node.pull(world.ref("index/recursive")) == world.here().id


def test_unsigned_index_is_refused(node: ImageNode, world: World) -> None:
    node.policy(only_signed(world, sigstore(world.key_files["ecdsa"])))
    error = refused(node, world.ref("index/unsigned"))
    # Both places a signature could be were looked at.
    assert world.index.index.digest in error.message
    assert world.here().manifest.digest in error.message


def test_signatures_come_from_the_mirror_that_serves_the_image(
        tmp_path: Path, world: World) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    node = ImageNode(tmp_path / "node")
    node.registries_conf(f"""
[[registry]]
location = "{unreachable}"
insecure = true
[[registry.mirror]]
location = "{world.host}"
insecure = true
""")
    key = world.key_files["ecdsa"]
    name = f"{unreachable}/signed/app:1"
    # The image's identity is the name pulled, not the mirror's: the
    # mirror's signature claims the mirror's name, so it needs a remap.
    node.policy({"default": [{"type": "reject"}], "transports": {"docker": {
        unreachable: [sigstore(key)]}}})
    with pytest.raises(BusError) as caught:
        node.pull(name)
    # The primary (unreachable) then failed too; its failure sets the code.
    assert f"mirror {world.host}: SignatureValidationFailed: " in caught.value.message
    assert "does not accept" in caught.value.message
    assert node.blobs == []
    node.policy({"default": [{"type": "reject"}], "transports": {"docker": {
        unreachable: [sigstore(key, signedIdentity={
            "type": "remapIdentity", "prefix": unreachable, "signedPrefix": world.host})]}}})
    assert node.pull(name) == world.image.id


def test_present_image_is_checked_again(node: ImageNode, world: World) -> None:
    name = world.ref("unsigned/app")
    assert node.pull(name) == world.image.id  # no policy file: accepted
    node.policy(only_signed(world, sigstore(world.key_files["ecdsa"])))
    for again in (name, f"{world.host}/unsigned/app@{world.image.manifest.digest}"):
        with pytest.raises(SignatureRejected):
            node.pull(again)
    # Refusing a pull does not remove what an earlier pull stored.
    assert [i.id for i in node.list()] == [world.image.id]


# ---- reject, insecureAcceptAnything, scopes ----------------------------------------


def test_reject_refuses_before_any_network(node: ImageNode, world: World) -> None:
    node.policy({"default": [{"type": "reject"}]})
    # Nothing listens there: a refusal that tried the network would say so.
    name = f"127.0.0.1:{free_port()}/app:1"
    error = refused(node, name)
    assert f"image {name} rejected by {node.image['signature_policy']}: " \
           "default says \"reject\"" in error.message


def test_insecure_accept_anything_scope(node: ImageNode, world: World) -> None:
    node.policy({"default": [{"type": "reject"}], "transports": {"docker": {
        f"{world.host}/unsigned": [{"type": "insecureAcceptAnything"}]}}})
    assert node.pull(world.ref("unsigned/app")) == world.image.id
    refused(ImageNode(node.base.parent / "second", image=dict(node.image)),
            world.ref("signed/app"))


def test_the_most_specific_scope_wins(node: ImageNode, world: World) -> None:
    key = world.key_files["ecdsa"]
    host = world.host
    node.policy({
        "default": [{"type": "reject"}],
        "transports": {"docker": {
            host: [sigstore(key)],
            f"{host}/unsigned/app": [{"type": "insecureAcceptAnything"}],
            f"{host}/otherkey/app:1": [{"type": "reject"}],
            f"{host}/otherkey/app": [{"type": "insecureAcceptAnything"}],
        }}})
    # Repository scope over host scope.
    assert node.pull(world.ref("unsigned/app")) == world.image.id
    # Host scope over the default.
    assert node.pull(world.ref("signed/app")) == world.image.id
    node.remove(world.image.id)
    error = refused(node, world.ref("wrongdigest/app"))
    assert f"scope {host!r}" in error.message
    # Tag scope over repository scope.
    error = refused(node, world.ref("otherkey/app"))
    assert f"scope '{host}/otherkey/app:1' says \"reject\"" in error.message
    # Another name for the same registry falls to the default.
    node.insecure(host, f"localhost:{host.rsplit(':', 1)[1]}")
    error = refused(node, f"localhost:{host.rsplit(':', 1)[1]}/unsigned/app:1")
    assert "default says \"reject\"" in error.message


def test_transport_default_scope_applies_before_the_global_default(node: ImageNode,
                                                                   world: World) -> None:
    node.policy({"default": [{"type": "reject"}],
                 "transports": {"docker": {"": [{"type": "insecureAcceptAnything"}]}}})
    assert node.pull(world.ref("unsigned/app")) == world.image.id


# ---- the file itself ---------------------------------------------------------------


def test_no_policy_file_accepts_with_one_warning(node: ImageNode, world: World,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="podvisor.workers.image.policy")
    path = node.image["signature_policy"]
    assert not Path(path).exists()
    assert node.pull(world.ref("unsigned/app")) == world.image.id
    assert node.pull(world.ref("signed/app")) == world.image.id
    warnings = [r for r in caplog.records if path in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "every image is accepted" in warnings[0].getMessage()


@pytest.mark.parametrize(("text", "problem"), [
    ("{", "not valid JSON"),
    ('{"transports": {}}', "'default' requirements are missing"),
    ('{"default": []}', "must not be empty"),
    ('{"default": [{"type": "acceptIfSunny"}]}', "unknown requirement type 'acceptIfSunny'"),
    ('{"default": [{"type": "reject", "why": 1}]}', "unknown field 'why'"),
    ('{"default": [{"type": "reject"}], "default": [{"type": "reject"}]}', "duplicate key"),
    ('{"default": [{"type": "sigstoreSigned"}]}', "exactly one of keyPath"),
    ('{"default": [{"type": "reject"}], "transports": {"docker-daemon": {"": [{}]}}}',
     "transports.docker-daemon"),
])
def test_malformed_policy_fails_clearly(node: ImageNode, world: World, text: str,
                                        problem: str) -> None:
    path = node.policy(text)
    with pytest.raises(FailedPrecondition) as caught:
        node.pull(world.ref("unsigned/app"))
    assert f"invalid signature policy {path}" in caught.value.message
    assert problem in caught.value.message
    assert node.blobs == [] and node.list() == []


def test_signed_by_is_refused_as_unsupported_only_where_it_applies(node: ImageNode,
                                                                    world: World) -> None:
    signed_by = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/no/such/keyring.gpg"}
    node.policy({"default": [{"type": "insecureAcceptAnything"}],
                 "transports": {"docker": {f"{world.host}/signed": [signed_by]}}})
    assert node.pull(world.ref("unsigned/app")) == world.image.id
    with pytest.raises(FailedPrecondition) as caught:
        node.pull(world.ref("signed/app"))
    assert "signedBy" in caught.value.message and "not supported" in caught.value.message
    assert node.image["signature_policy"] in caught.value.message


def test_unreadable_key_is_a_configuration_error(node: ImageNode, world: World,
                                                 tmp_path: Path) -> None:
    missing = tmp_path / "missing.pub"
    node.policy(only_signed(world, sigstore(missing)))
    with pytest.raises(FailedPrecondition) as caught:
        node.pull(world.ref("signed/app"))
    assert f"key {missing} cannot be read" in caught.value.message
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    node.policy(only_signed(world, sigstore(garbage)))
    with pytest.raises(FailedPrecondition) as caught:
        node.pull(world.ref("signed/app"))
    assert f"key {garbage}: not a PEM public key" in caught.value.message


def test_rejection_travels_the_bus_as_the_kubelet_expects(node: ImageNode,
                                                          world: World) -> None:
    from podvisor.proto.errors import from_wire

    node.policy({"default": [{"type": "reject"}]})
    with pytest.raises(BusError) as caught:
        node.pull(world.ref("unsigned/app"))
    rebuilt = from_wire(caught.value.to_wire())
    assert rebuilt.code == Code.UNKNOWN
    assert rebuilt.message.startswith("SignatureValidationFailed: image ")
