"""Docker reference parsing and normalisation (workers/image/reference.py)."""

from __future__ import annotations

import pytest

from podvisor.proto.errors import InvalidArgument
from podvisor.workers.image import reference
from podvisor.workers.image.reference import Reference

HEX = "a" * 64


@pytest.mark.parametrize(("text", "expected"), [
    ("busybox", Reference("", "busybox")),
    ("busybox:1.36", Reference("", "busybox", tag="1.36")),
    ("library/busybox", Reference("", "library/busybox")),
    ("docker.io/busybox", Reference("docker.io", "busybox")),
    ("localhost/foo", Reference("localhost", "foo")),
    ("localhost:5000/foo/bar:v1", Reference("localhost:5000", "foo/bar", tag="v1")),
    ("127.0.0.1:5000/a/b/c", Reference("127.0.0.1:5000", "a/b/c")),
    ("Registry/foo", Reference("Registry", "foo")),
    (f"quay.io/x/y@sha256:{HEX}", Reference("quay.io", "x/y", digest=f"sha256:{HEX}")),
    (f"quay.io/x/y:t@sha256:{HEX}", Reference("quay.io", "x/y", "t", f"sha256:{HEX}")),
    ("a__b/c-d--e/f.g_h", Reference("", "a__b/c-d--e/f.g_h")),
    ("[::1]:5000/foo", Reference("[::1]:5000", "foo")),
])
def test_parse_splits_domain_path_tag_and_digest(text: str, expected: Reference) -> None:
    parsed = reference.parse(text)
    assert parsed == expected
    assert str(parsed) == text


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "empty"),
    ("registry.example.com:65536/app", "port 65536 is not between 1 and 65535"),
    ("127.0.0.1:0/app", "port 0 is not between 1 and 65535"),
    ("[::1]:99999/app", "port 99999"),
    ("Busybox", "must be lowercase"),
    ("foo/Bar", "must be lowercase"),
    ("foo:", "tag ''"),
    ("foo:-bad", "tag '-bad'"),
    ("foo:" + "t" * 129, "1-128 characters"),
    ("foo@sha256:abc", "64 lowercase hex"),
    ("foo@md5:" + "a" * 32, "not supported"),
    ("foo@" + HEX, "no 'algorithm:' prefix"),
    ("foo//bar", "path component ''"),
    ("-foo", "path component '-foo'"),
    ("foo_/bar", "path component 'foo_'"),
    (HEX, "image id"),
    (" foo", "whitespace"),
    ("a" * 256, "longer than 255"),
    ("my_host.com:x/foo", "not a valid registry"),
])
def test_parse_rejects_with_a_message_saying_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        reference.parse(text)
    assert fragment in info.value.message


@pytest.mark.parametrize(("text", "qualified"), [
    ("busybox", "docker.io/library/busybox"),
    ("busybox:1", "docker.io/library/busybox:1"),
    ("user/app", "docker.io/user/app"),
    ("docker.io/busybox", "docker.io/library/busybox"),
    ("index.docker.io/busybox", "docker.io/library/busybox"),
    ("index.docker.io/u/app:2", "docker.io/u/app:2"),
    ("quay.io/busybox", "quay.io/busybox"),
    ("localhost/busybox", "localhost/busybox"),
])
def test_qualify_applies_docker_hub_defaults(text: str, qualified: str) -> None:
    assert str(reference.parse_qualified(text)) == qualified


def test_qualify_short_name_with_a_chosen_registry() -> None:
    ref = reference.parse("app:1")
    assert str(reference.qualify(ref, "registry.example.com")) == "registry.example.com/app:1"
    assert str(reference.qualify(ref, "docker.io")) == "docker.io/library/app:1"


def test_default_tag_only_when_no_tag_and_no_digest() -> None:
    assert reference.parse("a.io/x").with_default_tag().tag == "latest"
    assert reference.parse("a.io/x:1").with_default_tag().tag == "1"
    by_digest = reference.parse(f"a.io/x@sha256:{HEX}").with_default_tag()
    assert by_digest.tag is None


def test_names_with_tag_and_digest() -> None:
    ref = reference.parse(f"a.io/x:1@sha256:{HEX}")
    assert ref.tagged() == "a.io/x:1"
    assert ref.digested() == f"a.io/x@sha256:{HEX}"
    assert ref.digested("sha256:" + "b" * 64) == "a.io/x@sha256:" + "b" * 64


def test_image_ids_are_recognised() -> None:
    assert reference.is_image_id(HEX)
    assert reference.is_image_id(f"sha256:{HEX}")
    assert not reference.is_image_id("abc")
    assert not reference.is_image_id(f"sha512:{HEX}")
