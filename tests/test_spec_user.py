"""User and group resolution against a fake rootfs, including hostile symlinks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import InvalidArgument
from podvisor.workers.runtime.spec_user import (
    ExecUser,
    UserDb,
    oci_user,
    open_in_root,
    parse_group,
    parse_passwd,
    read_in_root,
    resolve,
)

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
app:x:1000:1000:App:/home/app:/bin/sh
+nisuser
broken:x:notanumber:0::/:/bin/sh
short:x:5
"""

GROUP = """\
root:x:0:root
bin:x:1:root,daemon
wheel:x:10:root,app
app:x:1000:
extra:x:2000:app, daemon
odd:x:zz:app
"""

HOST_SECRET = "secret:x:0:0:must-never-be-read:/:/bin/sh\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A passwd file outside the rootfs that no resolution may reach."""
    path = tmp_path / "host-etc" / "passwd"
    path.parent.mkdir()
    path.write_text(HOST_SECRET)
    return path


def db(rootfs: Path) -> UserDb:
    return UserDb.from_rootfs(str(rootfs))


def test_parsers_skip_comments_nis_and_malformed_lines() -> None:
    assert [e.name for e in parse_passwd(PASSWD)] == ["root", "daemon", "app"]
    groups = parse_group(GROUP)
    assert [g.name for g in groups] == ["root", "bin", "wheel", "app", "extra"]
    assert groups[4].members == ("app", "daemon")


@pytest.mark.parametrize(("spec", "expected"), [
    ("", ExecUser(0, 0, (0, 1, 10))),            # root, and every group listing root
    ("root", ExecUser(0, 0, (0, 1, 10))),
    ("app", ExecUser(1000, 1000, (10, 2000))),
    ("1000", ExecUser(1000, 1000, (10, 2000))),  # a uid finds the entry, and its groups
    ("4242", ExecUser(4242, 0, ())),             # a number without an entry is used as is
    ("app:extra", ExecUser(1000, 2000, ())),     # an explicit group: no supplementary groups
    ("app:2000", ExecUser(1000, 2000, ())),
    ("app:777", ExecUser(1000, 777, ())),
    ("4242:4343", ExecUser(4242, 4343, ())),
])
def test_resolve_follows_runc_exec_user(rootfs: Path, spec: str, expected: ExecUser) -> None:
    assert resolve(spec, db(rootfs)) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("nobody", "unable to find user nobody"),
    ("app:nogroup", "unable to find group nogroup"),
    ("99999999999", "out of range"),
])
def test_resolve_refuses_unknown_names(rootfs: Path, spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        resolve(spec, db(rootfs))


def test_no_passwd_means_numeric_users_only(tmp_path: Path) -> None:
    empty = UserDb.from_rootfs(str(tmp_path))
    assert resolve("", empty) == ExecUser(0, 0, ())
    assert resolve("123:456", empty) == ExecUser(123, 456, ())
    with pytest.raises(InvalidArgument):
        resolve("app", empty)


def sc(**fields: Any) -> api.LinuxContainerSecurityContext:
    """A LinuxContainerSecurityContext; run_as_user/run_as_group are Int64Value wrappers."""
    for key in ("run_as_user", "run_as_group"):
        if key in fields:
            fields[key] = api.Int64Value(value=fields[key])
    return api.LinuxContainerSecurityContext(**fields)


@pytest.mark.parametrize(("context", "image_user", "expected"), [
    (sc(), "", {"uid": 0, "gid": 0, "additionalGids": [0, 1, 10]}),
    (sc(), "app", {"uid": 1000, "gid": 1000, "additionalGids": [1000, 10, 2000]}),
    (sc(), "app:extra", {"uid": 1000, "gid": 2000, "additionalGids": [2000]}),
    # run_as_user wins over the image, and keeps only the uid part
    (sc(run_as_user=1000), "daemon:bin", {"uid": 1000, "gid": 1000,
                                          "additionalGids": [1000, 10, 2000]}),
    (sc(run_as_user=0), "app", {"uid": 0, "gid": 0, "additionalGids": [0, 1, 10]}),
    (sc(run_as_username="app", run_as_user=5), "", {"uid": 1000, "gid": 1000,
                                                    "additionalGids": [1000, 10, 2000]}),
    (sc(run_as_user=1000, run_as_group=3000, supplemental_groups=[10, 4000]), "",
     {"uid": 1000, "gid": 3000, "additionalGids": [3000, 10, 2000, 4000]}),
    (sc(run_as_user=1000, supplemental_groups_policy="Strict", supplemental_groups=[4000]), "",
     {"uid": 1000, "gid": 1000, "additionalGids": [1000, 4000]}),
])
def test_oci_user_follows_cri_o(rootfs: Path, context: api.LinuxContainerSecurityContext,
                                image_user: str, expected: dict[str, Any]) -> None:
    assert oci_user(context, image_user, db(rootfs)) == expected


def test_run_as_group_without_a_user_is_invalid(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="run_as_group is set without"):
        oci_user(sc(run_as_group=5), "app", db(rootfs))


def test_negative_ids_are_invalid(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="out of range"):
        oci_user(sc(run_as_user=-1), "", db(rootfs))


def test_unknown_supplemental_groups_policy_is_invalid(rootfs: Path) -> None:
    # proto3 enums are open: a number no cri-api we know defines parses.
    context = sc(supplemental_groups_policy=7)
    with pytest.raises(InvalidArgument, match="supplemental_groups_policy: unknown value 7"):
        oci_user(context, "", db(rootfs))


def test_absolute_symlink_out_of_the_rootfs_is_not_followed(rootfs: Path, outside: Path) -> None:
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to(outside)
    assert read_in_root(str(rootfs), "/etc/passwd") == ""
    with pytest.raises(InvalidArgument, match="unable to find user secret"):
        resolve("secret", db(rootfs))


def test_relative_dotdot_symlink_stops_at_the_rootfs(rootfs: Path, outside: Path) -> None:
    depth = len(rootfs.parts)
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("../" * depth + str(outside).lstrip("/"))
    assert read_in_root(str(rootfs), "/etc/passwd") == ""


def test_symlinked_etc_dir_is_resolved_inside_the_rootfs(rootfs: Path, outside: Path) -> None:
    os.rename(rootfs / "etc", rootfs / "real-etc")
    (rootfs / "etc").symlink_to("/real-etc")          # absolute: means <rootfs>/real-etc
    assert read_in_root(str(rootfs), "/etc/passwd") == PASSWD
    (rootfs / "etc").unlink()
    (rootfs / "etc").symlink_to(outside.parent)       # the host's dir, by absolute path
    assert read_in_root(str(rootfs), "/etc/passwd") == ""


def test_symlink_loops_and_non_regular_files_read_as_absent(rootfs: Path) -> None:
    (rootfs / "etc" / "group").unlink()
    (rootfs / "etc" / "group").symlink_to("group")
    assert open_in_root(str(rootfs), "/etc/group") is None
    (rootfs / "etc" / "passwd").unlink()
    os.mkfifo(rootfs / "etc" / "passwd")               # would block a plain open()
    assert read_in_root(str(rootfs), "/etc/passwd") == ""
