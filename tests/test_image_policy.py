"""containers-policy.json parsing, scope lookup, signedIdentity rules and the
cosign payload format, without a registry (tests/test_image_trust.py pulls)."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import imagebuild as build
import pytest

from podvisor.proto.errors import FailedPrecondition
from podvisor.workers.image import identity, policy, sigstore
from podvisor.workers.image.policy import (
    InsecureAcceptAnything,
    PolicyLoader,
    Reject,
    SigstoreSigned,
    Unsupported,
)
from podvisor.workers.image.reference import parse_qualified

DIGEST = "sha256:" + "a" * 64
OTHER_DIGEST = "sha256:" + "b" * 64


def load(doc: dict[str, Any] | str, path: str = "/etc/containers/policy.json") -> policy.Policy:
    return policy.parse((doc if isinstance(doc, str) else json.dumps(doc)).encode(), path)


# ---- scopes ------------------------------------------------------------------


def test_scope_keys_most_specific_first() -> None:
    ref = parse_qualified("reg.example.com:5000/ns/sub/app:1")
    assert policy.docker_scopes(ref) == [
        "reg.example.com:5000/ns/sub/app:1", "reg.example.com:5000/ns/sub/app",
        "reg.example.com:5000/ns/sub", "reg.example.com:5000/ns", "reg.example.com:5000",
        "*.example.com", "*.com"]
    by_digest = parse_qualified(f"busybox@{DIGEST}")
    assert policy.docker_scopes(by_digest)[:3] == [
        f"docker.io/library/busybox@{DIGEST}", "docker.io/library/busybox",
        "docker.io/library"]


def test_each_scope_level_overrides_the_ones_below() -> None:
    levels = ["reg.example.com/ns/app:1", "reg.example.com/ns/app", "reg.example.com/ns",
              "reg.example.com", "*.example.com", ""]
    ref = parse_qualified("reg.example.com/ns/app:1")
    for i, winner in enumerate(levels):
        scopes = {key: [{"type": "reject"}] for key in levels[i + 1:]}
        scopes[winner] = [{"type": "insecureAcceptAnything"}]
        scope = load({"default": [{"type": "reject"}],
                      "transports": {"docker": scopes}}).scope_for(ref)
        assert scope.requirements == (InsecureAcceptAnything(),), winner
    scope = load({"default": [{"type": "insecureAcceptAnything"}],
                  "transports": {"docker": {"other.example.com": [{"type": "reject"}]}}}
                 ).scope_for(ref)
    assert scope.name == "default" and scope.requirements == (InsecureAcceptAnything(),)


def test_a_wildcard_never_matches_the_bare_domain_or_a_port() -> None:
    doc = {"default": [{"type": "insecureAcceptAnything"}],
           "transports": {"docker": {"*.example.com": [{"type": "reject"}],
                                     "*.example.com:5000": [{"type": "reject"}]}}}
    p = load(doc)
    assert p.scope_for(parse_qualified("example.com/app:1")).name == "default"
    assert p.scope_for(parse_qualified("a.b.example.com:5000/app:1")).name \
        == "scope '*.example.com'"
    # Scopes are not parsed images: other transports and other spellings
    # (the short name) never match a docker pull.
    shorts = {"default": [{"type": "insecureAcceptAnything"}],
              "transports": {"docker": {"busybox": [{"type": "reject"}]},
                             "docker-daemon": {"": [{"type": "reject"}]}}}
    assert load(shorts).scope_for(parse_qualified("busybox:1")).name == "default"


# ---- requirements ------------------------------------------------------------------


def test_requirement_kinds() -> None:
    pem = b"-----BEGIN PUBLIC KEY-----\n...\n"
    p = load({"default": [
        {"type": "insecureAcceptAnything"},
        {"type": "reject"},
        {"type": "sigstoreSigned", "keyPath": "/k.pub"},
        {"type": "sigstoreSigned", "keyPaths": ["/a.pub", "/b.pub"],
         "signedIdentity": {"type": "matchRepository"}},
        {"type": "sigstoreSigned", "keyDatas": [base64.b64encode(pem).decode()]},
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"},
        {"type": "sigstoreSigned", "fulcio": {"caPath": "/ca"}, "rekorPublicKeyPath": "/r"},
        {"type": "sigstoreSigned", "keyPath": "/k.pub", "rekorPublicKeyPath": "/r"},
        {"type": "signedBaseLayer", "baseLayerIdentity": {"type": "matchExact"}},
    ]})
    accept, reject, one, two, data, gpg, fulcio, rekor, base = p.default
    assert accept == InsecureAcceptAnything() and reject == Reject()
    assert isinstance(one, SigstoreSigned) and one.describe_keys() == "key /k.pub"
    assert one.identity == identity.MatchRepoDigestOrExact()
    assert isinstance(two, SigstoreSigned) and two.describe_keys() == "keys /a.pub, /b.pub"
    assert two.identity == identity.MatchRepository()
    assert isinstance(data, SigstoreSigned) and data.keys[0].pem == pem
    for unsupported in (gpg, fulcio, rekor, base):
        assert isinstance(unsupported, Unsupported)
        assert "not supported" in unsupported.reason


@pytest.mark.parametrize(("requirement", "problem"), [
    ({"type": "sigstoreSigned", "keyPath": "/a", "keyData": "QQ=="}, "exactly one of"),
    ({"type": "sigstoreSigned", "keyPaths": []}, "non-empty list"),
    ({"type": "sigstoreSigned", "keyData": "not base64!"}, "not base64"),
    ({"type": "sigstoreSigned", "keyPath": "/a", "keyType": "GPGKeys"}, "unknown field"),
    ({"type": "sigstoreSigned", "fulcio": {}}, "fulcio needs a Rekor public key"),
    ({"type": "sigstoreSigned", "keyPath": "/a", "signedIdentity": {"type": "matchAll"}},
     "unknown identity type 'matchAll'"),
    ({"type": "sigstoreSigned", "keyPath": "/a",
      "signedIdentity": {"type": "exactReference", "dockerReference": "busybox"}},
     "neither a tag nor a digest"),
    ({"type": "sigstoreSigned", "keyPath": "/a",
      "signedIdentity": {"type": "remapIdentity", "prefix": "busybox",
                         "signedPrefix": "docker.io/library"}},
     "prefix 'busybox' is not a host[:port], namespace or repository"),
    ({"type": "sigstoreSigned", "keyPath": "/a",
      "signedIdentity": {"type": "matchExact", "extra": 1}}, "does not take 'extra'"),
    ({"type": "signedBy", "keyPath": "/k.gpg"}, "keyType"),
    ({"type": "reject", "type2": 1}, "unknown field 'type2'"),
    ("reject", "JSON object with a string 'type'"),
])
def test_invalid_requirements_name_the_spot(requirement: Any, problem: str) -> None:
    doc = {"default": [{"type": "reject"}],
           "transports": {"docker": {"reg.example.com/app": [requirement]}}}
    with pytest.raises(FailedPrecondition) as caught:
        load(doc, "/etc/x/policy.json")
    message = caught.value.message
    assert message.startswith("invalid signature policy /etc/x/policy.json: "
                              "transports.docker['reg.example.com/app'][0]")
    assert problem in message


def test_duplicate_keys_are_refused_at_any_depth() -> None:
    text = ('{"default": [{"type": "reject"}], "transports": {"docker": '
            '{"a.com": [{"type": "reject"}], "a.com": [{"type": "insecureAcceptAnything"}]}}}')
    with pytest.raises(FailedPrecondition, match=r"duplicate key 'a\.com'"):
        load(text)


def test_loader_warns_once_per_missing_file(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="podvisor.workers.image.policy")
    missing = str(tmp_path / "policy.json")
    loader = PolicyLoader(missing)
    for _ in range(3):
        p = loader.load()
        assert not p.exists and p.default == (InsecureAcceptAnything(),)
    assert len([r for r in caplog.records if missing in r.getMessage()]) == 1
    (tmp_path / "policy.json").write_text('{"default": [{"type": "reject"}]}')
    assert loader.load().default == (Reject(),)
    with pytest.raises(FailedPrecondition, match="cannot be read"):
        PolicyLoader(str(tmp_path)).load()


def settle(path: Path) -> None:
    """Date ``path`` an hour back, so its parse may be kept (filecache.py)."""
    old = path.stat().st_mtime - 3600
    os.utime(path, (old, old))


def test_an_unchanged_policy_is_parsed_once_and_an_edit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"default": [{"type": "reject"}]}')
    settle(path)
    loader = PolicyLoader(str(path))
    first = loader.load()
    assert loader.load() is first
    path.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    assert loader.load().default == (InsecureAcceptAnything(),)
    path.unlink()
    assert not loader.load().exists
    path.write_text("{")
    with pytest.raises(FailedPrecondition, match="not valid JSON"):
        loader.load()
    with pytest.raises(FailedPrecondition, match="not valid JSON"):
        loader.load()


# ---- signedIdentity ------------------------------------------------------------


HOST = "reg.example.com"


@pytest.mark.parametrize(("rule", "image", "claimed", "expected"), [
    # matchRepoDigestOrExact: a tag needs the exact reference ...
    ({"type": "matchRepoDigestOrExact"}, f"{HOST}/app:1", f"{HOST}/app:1", True),
    ({"type": "matchRepoDigestOrExact"}, f"{HOST}/app:1", f"{HOST}/app:2", False),
    ({"type": "matchRepoDigestOrExact"}, f"{HOST}/app:1", f"{HOST}/app", False),
    # ... a digest needs the repository, with some tag or digest claimed.
    ({"type": "matchRepoDigestOrExact"}, f"{HOST}/app@{DIGEST}", f"{HOST}/app:9", True),
    ({"type": "matchRepoDigestOrExact"}, f"{HOST}/app@{DIGEST}", f"{HOST}/app", False),
    ({"type": "matchRepoDigestOrExact"}, f"{HOST}/app@{DIGEST}", f"{HOST}/other:1", False),
    # A tag and a digest pull by digest.
    ({"type": "matchRepoDigestOrExact"}, f"{HOST}/app:1@{DIGEST}", f"{HOST}/app:2", True),
    ({"type": "matchExact"}, f"{HOST}/app:1", f"{HOST}/app:1", True),
    ({"type": "matchExact"}, f"{HOST}/app@{DIGEST}", f"{HOST}/app:1", False),
    ({"type": "matchExact"}, f"{HOST}/app@{DIGEST}", f"{HOST}/app@{DIGEST}", True),
    ({"type": "matchRepository"}, f"{HOST}/app:1", f"{HOST}/app", True),
    ({"type": "matchRepository"}, f"{HOST}/app:1", f"{HOST}/app:7", True),
    ({"type": "matchRepository"}, f"{HOST}/app:1", f"{HOST}/ns/app:1", False),
    # Claims are normalised as docker does; garbage never matches.
    ({"type": "matchRepository"}, "docker.io/library/busybox:1", "busybox", True),
    ({"type": "matchRepository"}, f"{HOST}/app:1", "Not A Reference", False),
    ({"type": "exactReference", "dockerReference": f"{HOST}/vendor/app:3"},
     f"{HOST}/mirror/app:1", f"{HOST}/vendor/app:3", True),
    ({"type": "exactReference", "dockerReference": f"{HOST}/vendor/app:3"},
     f"{HOST}/mirror/app:1", f"{HOST}/mirror/app:1", False),
    ({"type": "exactRepository", "dockerRepository": f"{HOST}/vendor/app"},
     f"{HOST}/mirror/app:1", f"{HOST}/vendor/app:9", True),
    ({"type": "remapIdentity", "prefix": "mirror.local:5000/vendor",
      "signedPrefix": "vendor.example.com"},
     "mirror.local:5000/vendor/product/app:1", "vendor.example.com/product/app:1", True),
    ({"type": "remapIdentity", "prefix": "mirror.local:5000/vendor",
      "signedPrefix": "vendor.example.com"},
     "mirror.local:5000/vendor/product/app:1", "mirror.local:5000/vendor/product/app:1", False),
    # Only whole components are a prefix; otherwise the name stays as it is.
    ({"type": "remapIdentity", "prefix": "mirror.local:5000/vendor",
      "signedPrefix": "vendor.example.com"},
     "mirror.local:5000/vendorx/app:1", "mirror.local:5000/vendorx/app:1", True),
])
def test_signed_identity(rule: dict[str, Any], image: str, claimed: str,
                         expected: bool) -> None:
    ref = identity.image_identity(parse_qualified(image))
    assert identity.matches(identity.parse(rule), ref, claimed) is expected


# ---- the cosign payload --------------------------------------------------------------


def test_payload_is_read_as_cosign_writes_it() -> None:
    data = build.payload(f"{HOST}/app:1", DIGEST)
    assert sigstore.parse_payload(data) == sigstore.Payload(f"{HOST}/app:1", DIGEST)
    assert sigstore.attachment_tag(DIGEST) == f"sha256-{'a' * 64}.sig"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda d: d["critical"].update(type="something else"), "payload type"),
    (lambda d: d["critical"].update(extra=1), "unknown field 'extra'"),
    (lambda d: d["critical"]["image"].pop("docker-manifest-digest"), "lacks field"),
    (lambda d: d["critical"]["image"].update({"docker-manifest-digest": "md5:x"}),
     "not supported"),
    (lambda d: d.pop("optional"), "lacks field 'optional'"),
    (lambda d: d.update(optional=[]), "optional"),
])
def test_payload_is_parsed_strictly(change: Any, problem: str) -> None:
    doc = json.loads(build.payload(f"{HOST}/app:1", DIGEST))
    change(doc)
    with pytest.raises(ValueError, match=problem):
        sigstore.parse_payload(json.dumps(doc).encode())


@pytest.mark.parametrize("kind", ["ecdsa", "rsa", "ed25519"])
def test_signatures_verify_only_with_their_key(kind: str) -> None:
    key, other = build.SigningKey(kind), build.SigningKey(kind)
    data = build.payload(f"{HOST}/app:1", DIGEST)
    signature = sigstore.decode_signature(key.sign(data))
    public = sigstore.load_key(key.public_pem())
    assert sigstore.verify(public, data, signature)
    assert not sigstore.verify(public, data.replace(b"app:1", b"app:2"), signature)
    assert not sigstore.verify(sigstore.load_key(other.public_pem()), data, signature)


def test_attachment_manifest_layers() -> None:
    data = build.payload(f"{HOST}/app:1", DIGEST)
    manifest, _, [layer] = build.signature_manifest([(data, "c2ln")])
    doc = json.loads(manifest.data)
    doc["layers"].append({"mediaType": "application/vnd.in-toto+json", "digest": OTHER_DIGEST,
                          "size": 1})
    signatures, others = sigstore.parse_attachments(json.dumps(doc).encode(), "")
    assert signatures == [sigstore.Signature(layer.digest, len(data), "c2ln")]
    assert others == 1
    sigstore.check_blob(data, signatures[0])
    with pytest.raises(ValueError, match="does not match"):
        sigstore.check_blob(data[:-1] + b" ", signatures[0])
    with pytest.raises(ValueError, match="media type"):
        sigstore.parse_attachments(json.dumps({**doc, "mediaType": "x"}).encode(), "")
