"""containers-registries.conf(5) v2 parsing and resolution, and a worker
reading the file again only once it changed (in-process, then through a
real daemon)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from daemonlib import Daemon
from registry import ImageNode

from podvisor.proto import api_pb2 as api
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


# ---- a worker's copy: parsed once, parsed again on change -----------------------


def search(*hosts: str) -> str:
    """A file that makes ``busybox`` ambiguous between ``hosts``: a pull of
    it fails naming them, before any registry is contacted."""
    return f"unqualified-search-registries = {list(hosts)!r}\n".replace("'", '"')


def settle(path: Path, mtime: float | None = None) -> float:
    """Date ``path`` back (an hour, or to ``mtime``), so a worker may keep
    its parse: one younger than filecache.SETTLE_NS is parsed every time."""
    when = path.stat().st_mtime - 3600 if mtime is None else mtime
    os.utime(path, (when, when))
    return when


def ambiguity(node: ImageNode) -> str:
    with pytest.raises(InvalidArgument, match="ambiguous") as info:
        node.pull("busybox")
    return info.value.message


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path registries_conf.load parses, in order."""
    seen: list[str] = []
    real: Callable[[str], registries_conf.RegistriesConf] = registries_conf.load

    def counted(path: str) -> registries_conf.RegistriesConf:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(registries_conf, "load", counted)
    return seen


def test_an_unchanged_file_is_parsed_once(tmp_path: Path, parses: list[str]) -> None:
    node = ImageNode(tmp_path / "node")
    conf = Path(node.image["registries_conf"])
    conf.write_text(search("a.example", "b.example"))
    settle(conf)
    assert "a.example, b.example" in ambiguity(node)
    assert node.status("busybox") == api.ImageStatusResponse()
    assert node.list("busybox") == []
    assert node.remove("busybox") == api.RemoveImageResponse()
    assert "a.example, b.example" in ambiguity(node)
    assert len(parses) == 1


def test_a_same_size_rewrite_with_the_old_mtime_is_read(tmp_path: Path,
                                                        parses: list[str]) -> None:
    node = ImageNode(tmp_path / "node")
    conf = Path(node.image["registries_conf"])
    conf.write_text(search("a.example", "b.example"))
    mtime = settle(conf)
    assert "a.example, b.example" in ambiguity(node)
    # What `cp -p` or an unpacked archive does: only the ctime tells.
    conf.write_text(search("c.example", "d.example"))
    settle(conf, mtime)
    assert "c.example, d.example" in ambiguity(node)
    assert "c.example, d.example" in ambiguity(node)
    assert len(parses) == 2


def test_dropins_and_the_file_appearing_and_going_are_noticed(
        tmp_path: Path, parses: list[str]) -> None:
    node = ImageNode(tmp_path / "node")
    conf = Path(node.image["registries_conf"])
    assert node.status("busybox") == api.ImageStatusResponse()  # absent: the defaults
    conf.write_text(search("a.example", "b.example"))
    settle(conf)
    assert "a.example, b.example" in ambiguity(node)
    dropin = conf.parent / "registries.conf.d" / "50-search.conf"
    dropin.parent.mkdir()
    dropin.write_text(search("e.example", "f.example"))
    settle(dropin)
    assert "e.example, f.example" in ambiguity(node)
    conf.unlink()
    message = ambiguity(node)
    assert "e.example, f.example" in message and str(conf) + "," not in message
    dropin.unlink()
    assert node.status("busybox") == api.ImageStatusResponse()
    assert len(parses) == 5
    assert node.status("busybox") == api.ImageStatusResponse()
    assert len(parses) == 5


def test_a_file_written_just_now_is_parsed_until_it_settles(tmp_path: Path,
                                                            parses: list[str]) -> None:
    # Its mtime may not move on a second write within the same clock tick,
    # so a parse of it is never kept.
    node = ImageNode(tmp_path / "node")
    conf = Path(node.image["registries_conf"])
    conf.write_text(search("a.example", "b.example"))
    ambiguity(node)
    ambiguity(node)
    assert len(parses) == 2
    settle(conf)
    ambiguity(node)
    ambiguity(node)
    assert len(parses) == 3


def test_a_broken_file_fails_every_op_until_fixed(tmp_path: Path) -> None:
    node = ImageNode(tmp_path / "node")
    conf = Path(node.image["registries_conf"])
    conf.write_text("unqualified-search-registries = [")
    settle(conf)
    for _ in range(2):
        with pytest.raises(FailedPrecondition, match="cannot read registries configuration"):
            node.status("busybox")
    conf.write_text(search("a.example", "b.example"))
    assert "a.example, b.example" in ambiguity(node)


def cri_ambiguity(daemon: Daemon) -> str:
    with pytest.raises(grpc.RpcError) as info:
        daemon.images.PullImage(api.PullImageRequest(image=api.ImageSpec(image="busybox")),
                                timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details: str = info.value.details()
    return details


@pytest.mark.slow
def test_the_daemon_reads_an_edited_file_without_a_restart(
        tmp_path: Path, make_daemon: Callable[..., Daemon]) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(search("a.example", "b.example"))
    mtime = settle(conf)
    daemon = make_daemon(workers={"image": 2}, extra=(
        f'[podvisor.image]\nregistries_conf = "{conf}"\n'
        f'signature_policy = "{tmp_path / "policy.json"}"\n'))
    pids = {key: w["pid"] for key, w in daemon.workers().items() if key[0] == "image"}
    # Several calls each time, so both workers' copies are seen.
    for _ in range(4):
        assert "a.example, b.example" in cri_ambiguity(daemon)
    conf.write_text(search("c.example", "d.example"))
    settle(conf, mtime)
    for _ in range(4):
        assert "c.example, d.example" in cri_ambiguity(daemon)
    dropin = tmp_path / "registries.conf.d" / "50-search.conf"
    dropin.parent.mkdir()
    dropin.write_text(search("e.example", "f.example"))
    for _ in range(4):
        assert "e.example, f.example" in cri_ambiguity(daemon)
    dropin.unlink()
    for _ in range(4):
        assert "c.example, d.example" in cri_ambiguity(daemon)
    assert {key: w["pid"] for key, w in daemon.workers().items() if key[0] == "image"} == pids
