"""The container's user and groups, resolved against the image's own files.

The rootfs is untrusted: it is whatever an image author put in it. Its
``/etc/passwd`` and ``/etc/group`` are read through ``open_in_root``,
which resolves every path component itself with the rootfs as ``/``:
absolute symlink targets restart at the rootfs, ``..`` stops at it, and
each step opens relative to the directory already reached, with
O_NOFOLLOW, so a symlink can never lead outside (the guarantee of
``openat2(RESOLVE_IN_ROOT)`` and of CRI-O's ``securejoin``). Only regular
files are read (a FIFO would block the worker), and at most
``MAX_FILE_BYTES`` of them.

Resolution follows runc's ``libcontainer/user.GetExecUser``, which CRI-O
calls (``utils.GetUserInfo``), so a user string means the same here:

- ``""`` is uid 0; ``name`` or ``uid`` is looked up in passwd, and a
  number with no entry is used as is; a name with no entry is an error;
- the primary gid comes from the passwd entry (0 without one);
- ``user:group`` takes the group from group (by name or gid; a number
  with no entry is used as is) and then adds no supplementary groups;
- without a group part, every group that lists the matched user *name* as
  a member is a supplementary group (so root in busybox-like images is
  also in bin, daemon, sys, ...).

The CRI layer on top is CRI-O's ``setupContainerUser``: the user string is
``run_as_username``, else ``run_as_user``, else the image's ``User``;
``run_as_group`` replaces the gid and needs a user or username beside it;
``additionalGids`` is the gid, then (policy Merge) the groups found above,
then ``supplemental_groups``, without repeats.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import InvalidArgument

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_SYMLINKS = 40          # as the kernel's path walk (ELOOP)
MAX_ID = 2**31 - 1         # runc's bound on uids and gids


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class UserDb:
    """The parsed passwd and group files of one rootfs (empty when absent)."""

    passwd: tuple[PasswdEntry, ...] = ()
    groups: tuple[GroupEntry, ...] = ()

    @classmethod
    def from_rootfs(cls, rootfs: str) -> UserDb:
        return cls(parse_passwd(read_in_root(rootfs, "/etc/passwd")),
                   parse_group(read_in_root(rootfs, "/etc/group")))


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    sgids: tuple[int, ...] = field(default=())


def open_in_root(root: str, path: str) -> int | None:
    """A read-only fd of the regular file ``path`` inside ``root``, or None.

    None covers every way the file is not there for us: missing, not a
    regular file, a symlink loop, or a component changed under our feet.
    """
    parts = deque(p for p in path.split("/") if p not in ("", "."))
    stack = [os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
    links = 0
    try:
        while parts:
            name = parts.popleft()
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            here = stack[-1]
            st = os.stat(name, dir_fd=here, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    return None
                target = os.readlink(name, dir_fd=here)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
            elif parts:
                if not stat.S_ISDIR(st.st_mode):
                    return None
                stack.append(os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, dir_fd=here))
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=here)
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    return fd
                os.close(fd)
                return None
            else:
                return None
        return None
    except OSError:
        return None
    finally:
        for fd in stack:
            os.close(fd)


def read_in_root(root: str, path: str) -> str:
    """The text of ``path`` inside ``root`` ("" when absent; see ``open_in_root``)."""
    fd = open_in_root(root, path)
    if fd is None:
        return ""
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidArgument(f"the image's {path} is larger than {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


def _lines(content: str) -> list[list[str]]:
    # NIS compat lines (+/-) and comments name no local user.
    return [line.split(":") for line in content.splitlines()
            if line.strip() and not line.startswith(("#", "+", "-"))]


def parse_passwd(content: str) -> tuple[PasswdEntry, ...]:
    """``name:password:uid:gid:gecos:home:shell`` lines; malformed ones are skipped.

    runc reads a non-numeric uid as 0; skipping the line instead keeps a
    broken entry from ever meaning root.
    """
    entries = []
    for fields in _lines(content):
        if len(fields) >= 4 and fields[2].isdigit() and fields[3].isdigit():
            entries.append(PasswdEntry(fields[0], int(fields[2]), int(fields[3])))
    return tuple(entries)


def parse_group(content: str) -> tuple[GroupEntry, ...]:
    """``name:password:gid:member,member`` lines; malformed ones are skipped."""
    entries = []
    for fields in _lines(content):
        if len(fields) >= 3 and fields[2].isdigit():
            members = fields[3].split(",") if len(fields) > 3 else []
            entries.append(GroupEntry(fields[0], int(fields[2]),
                                      tuple(m.strip() for m in members if m.strip())))
    return tuple(entries)


def _numeric(value: str, what: str) -> int | None:
    if not value.isdigit():
        return None
    number = int(value)
    if number > MAX_ID:
        raise InvalidArgument(f"{what} {value} is out of range (0..{MAX_ID})")
    return number


def resolve(user: str, db: UserDb) -> ExecUser:
    """An image-style user string (``name``, ``uid``, ``uid:gid``, ``name:group``)."""
    user_part, _, group_part = user.partition(":")
    uid = gid = 0
    matched = ""
    if user_part:
        found = [e for e in db.passwd if e.name == user_part or str(e.uid) == user_part]
    else:
        found = [e for e in db.passwd if e.uid == 0]
    if found:
        uid, gid, matched = found[0].uid, found[0].gid, found[0].name
    elif user_part:
        number = _numeric(user_part, "uid")
        if number is None:
            raise InvalidArgument(
                f"unable to find user {user_part}: no matching entries in the image's /etc/passwd")
        uid = number
    sgids: tuple[int, ...] = ()
    if group_part:
        groups = [g for g in db.groups if g.name == group_part or str(g.gid) == group_part]
        if groups:
            gid = groups[0].gid
        else:
            number = _numeric(group_part, "gid")
            if number is None:
                raise InvalidArgument(
                    f"unable to find group {group_part}: no matching entries in the image's "
                    "/etc/group")
            gid = number
    elif matched:
        sgids = tuple(g.gid for g in db.groups if matched in g.members)
    return ExecUser(uid, gid, sgids)


def _id(value: int, what: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"{what} {value} is out of range (0..{MAX_ID})")
    return value


def oci_user(security_context: api.LinuxContainerSecurityContext | api.LinuxSandboxSecurityContext,
             image_user: str, db: UserDb) -> dict[str, Any]:
    """The OCI ``process.user`` for a CRI Linux(Container|Sandbox)SecurityContext."""
    run_as_user = (security_context.run_as_user.value
                   if security_context.HasField("run_as_user") else None)
    run_as_group = (security_context.run_as_group.value
                    if security_context.HasField("run_as_group") else None)
    # Only a container's context has a user name; a sandbox's has none.
    username = (security_context.run_as_username
                if isinstance(security_context, api.LinuxContainerSecurityContext) else "")
    if run_as_group is not None and run_as_user is None and not username:
        raise InvalidArgument("run_as_group is set without run_as_user or run_as_username")
    if username:
        spec = username
    elif run_as_user is not None:
        spec = str(_id(run_as_user, "run_as_user"))
    else:
        spec = image_user
    resolved = resolve(spec, db)
    gid = resolved.gid if run_as_group is None else _id(run_as_group, "run_as_group")
    policy = security_context.supplemental_groups_policy
    if policy not in (api.Merge, api.Strict):
        # proto3 enums are open: a number from a newer cri-api parses.
        raise InvalidArgument(f"supplemental_groups_policy: unknown value {policy} "
                              "(expected one of Merge, Strict)")
    extra = resolved.sgids if policy == api.Merge else ()
    supplemental = [_id(g, "supplemental group") for g in security_context.supplemental_groups]
    additional = list(dict.fromkeys([gid, *extra, *supplemental]))
    return {"uid": resolved.uid, "gid": gid, "additionalGids": additional}
