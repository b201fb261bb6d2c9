"""containers-registries.conf(5) v2 parsing and resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from podvisor.proto.errors import FailedPrecondition, InvalidArgument
from podvisor.workers.image import reference, registries_conf
from podvisor.workers.image.registries_conf import PullFromMirror, ShortNameMode

DIGEST = "sha256:" + "d" * 64


def load(tmp_path: Path, text: str, *dropins: str) -> registries_conf.RegistriesConf:
    path = tmp_path / "registries.conf"
    path.write_text(text)
    if dropins:
        (tmp_path / "registries.conf.d").mkdir()
        for i, dropin in enumerate(dropins):
            (tmp_path / "registries.conf.d" / f"{i:02d}.conf").write_text(dropin)
    return registries_conf.load(str(path))


def sources(conf: registries_conf.RegistriesConf, text: str) -> list[tuple[str, bool, bool]]:
    ref = reference.parse_qualified(text)
    return [(str(s.reference), s.insecure, s.mirror)
            for s in registries_conf.pull_sources(conf, ref)]


def test_missing_file_gives_docker_hub_defaults(tmp_path: Path) -> None:
    conf = registries_conf.load(str(tmp_path / "absent.conf"))
    assert conf.search == ("docker.io",)
    assert conf.short_name_mode is ShortNameMode.ENFORCING
    ref = reference.parse("busybox")
    assert [str(r) for r in registries_conf.pull_candidates(conf, ref)] == [
        "docker.io/library/busybox"]


def test_mirrors_come_before_the_rewritten_location(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
prefix = "example.com/foo"
location = "internal.example.net/bar"
[[registry.mirror]]
location = "mirror-0.local/mirror-for-foo"
[[registry.mirror]]
location = "mirror-1.local/mirrors/foo"
insecure = true
""")
    assert sources(conf, "example.com/foo/image:latest") == [
        ("mirror-0.local/mirror-for-foo/image:latest", False, True),
        ("mirror-1.local/mirrors/foo/image:latest", True, True),
        ("internal.example.net/bar/image:latest", False, False),
    ]
    # "example.com/foobar" does not match prefix "example.com/foo".
    assert sources(conf, "example.com/foobar/x:1") == [("example.com/foobar/x:1", False, False)]


def test_longest_prefix_wins_and_prefix_defaults_to_location(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
location = "quay.io"
insecure = true
[[registry]]
prefix = "quay.io/secure"
location = "quay.io/secure"
""")
    assert sources(conf, "quay.io/other/x:1") == [("quay.io/other/x:1", True, False)]
    assert sources(conf, "quay.io/secure/x:1") == [("quay.io/secure/x:1", False, False)]


def test_docker_hub_library_needs_library_in_prefix(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
prefix = "docker.io/library"
location = "hub-mirror.local/library"
""")
    assert sources(conf, "busybox:1") == [("hub-mirror.local/library/busybox:1", False, False)]


def test_pull_from_mirror_digest_only_and_tag_only(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
location = "r.io"
[[registry.mirror]]
location = "by-digest.local"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "by-tag.local"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "always.local"
""")
    assert [s[0] for s in sources(conf, "r.io/x:1")] == [
        "by-tag.local/x:1", "always.local/x:1", "r.io/x:1"]
    assert [s[0] for s in sources(conf, f"r.io/x@{DIGEST}")] == [
        f"by-digest.local/x@{DIGEST}", f"always.local/x@{DIGEST}", f"r.io/x@{DIGEST}"]


def test_mirror_by_digest_only_applies_to_every_mirror(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
location = "r.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m.local"
""")
    assert conf.registries[0].mirrors[0].pull_from_mirror is PullFromMirror.DIGEST_ONLY
    assert [s[0] for s in sources(conf, "r.io/x:1")] == ["r.io/x:1"]


def test_mirror_by_digest_only_and_pull_from_mirror_conflict(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="cannot set pull-from-mirror"):
        load(tmp_path, """
[[registry]]
location = "r.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m.local"
pull-from-mirror = "all"
""")


def test_blocked_registry_is_refused_before_its_mirrors(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
location = "evil.example.com"
blocked = true
[[registry.mirror]]
location = "m.local"
""")
    with pytest.raises(FailedPrecondition, match=r"evil\.example\.com is blocked"):
        sources(conf, "evil.example.com/x:1")


def test_wildcard_prefix_matches_subdomains_only(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
prefix = "*.example.com"
insecure = true
[[registry.mirror]]
location = "m.local/cache"
""")
    assert sources(conf, "a.example.com:5000/x:1") == [
        ("m.local/cache/x:1", False, True), ("a.example.com:5000/x:1", True, False)]
    assert sources(conf, "example.com/x:1") == [("example.com/x:1", False, False)]


def test_wildcard_prefix_cannot_have_a_location(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="wildcard prefix"):
        load(tmp_path, '[[registry]]\nprefix = "*.example.com"\nlocation = "x.io"\n')


def test_short_names_enforcing_refuses_ambiguity(tmp_path: Path) -> None:
    conf = load(tmp_path, 'unqualified-search-registries = ["quay.io", "docker.io"]\n')
    with pytest.raises(InvalidArgument) as info:
        registries_conf.pull_candidates(conf, reference.parse("busybox"))
    assert "ambiguous" in info.value.message
    assert "quay.io, docker.io" in info.value.message
    # A local lookup may still find it under any candidate name.
    assert [str(r) for r in registries_conf.lookup_candidates(conf, reference.parse("app"))] \
        == ["quay.io/app", "docker.io/library/app"]


def test_short_names_permissive_tries_every_search_registry(tmp_path: Path) -> None:
    conf = load(tmp_path, 'unqualified-search-registries = ["quay.io", "docker.io"]\n'
                          'short-name-mode = "permissive"\n')
    assert [str(r) for r in registries_conf.pull_candidates(conf, reference.parse("a:1"))] \
        == ["quay.io/a:1", "docker.io/library/a:1"]


def test_no_search_registries_means_short_names_fail(tmp_path: Path) -> None:
    conf = load(tmp_path, "unqualified-search-registries = []\n")
    with pytest.raises(InvalidArgument, match="no unqualified-search-registries"):
        registries_conf.pull_candidates(conf, reference.parse("busybox"))


def test_aliases_resolve_short_names_keeping_tag_and_digest(tmp_path: Path) -> None:
    conf = load(tmp_path, """
unqualified-search-registries = ["quay.io", "docker.io"]
[aliases]
"app" = "registry.example.com/team/app"
""")
    assert [str(r) for r in registries_conf.pull_candidates(conf, reference.parse("app:2"))] \
        == ["registry.example.com/team/app:2"]
    assert [str(r) for r in registries_conf.pull_candidates(
        conf, reference.parse(f"app@{DIGEST}"))] == [f"registry.example.com/team/app@{DIGEST}"]


@pytest.mark.parametrize(("text", "fragment"), [
    ('[aliases]\n"app" = "short/name"\n', "fully qualified"),
    ('[aliases]\n"quay.io/app" = "quay.io/x"\n', "must be a short name"),
    ('[aliases]\n"app" = "quay.io/x:1"\n', "no tag or digest"),
    ('short-name-mode = "prompt"\n', "short-name-mode 'prompt'"),
    ('[[registry]]\nlocation = "noport"\n', "registry host"),
    ('[[registry]]\nprefix = "r.io"\ninsecure = "yes"\n', "insecure must be true or false"),
    ('[[registry]]\nlocation = "r.io"\n[[registry.mirror]]\nlocation = "m.io"\n'
     'pull-from-mirror = "sometimes"\n', "digest-only or tag-only"),
    ("[registries.search]\nregistries = ['docker.io']\n", "version 1"),
    ("unqualified-search-registries = [\n", "cannot read"),
])
def test_bad_files_are_refused_with_the_file_named(tmp_path: Path, text: str,
                                                   fragment: str) -> None:
    with pytest.raises(FailedPrecondition) as info:
        load(tmp_path, text)
    assert fragment in info.value.message
    assert "registries.conf" in info.value.message


def test_dropins_override_in_name_order(tmp_path: Path) -> None:
    conf = load(tmp_path, """
unqualified-search-registries = ["quay.io", "docker.io"]
[[registry]]
location = "r.io"
insecure = false
[aliases]
"old" = "quay.io/old"
"keep" = "quay.io/keep"
""", """
unqualified-search-registries = ["docker.io"]
[[registry]]
location = "r.io"
insecure = true
[aliases]
"old" = ""
""")
    assert conf.search == ("docker.io",)
    assert sources(conf, "r.io/x:1") == [("r.io/x:1", True, False)]
    assert dict(conf.aliases) == {"keep": "quay.io/keep"}
    assert len(conf.sources) == 2
