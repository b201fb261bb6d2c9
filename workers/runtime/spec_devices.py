"""Device nodes and the device cgroup: ``linux.devices`` and ``linux.resources.devices``.

The cgroup rules start from deny-all and allow what every container
needs: mknod of any node (the runtime creates /dev's default nodes), the
OCI runtime-spec's default devices (null, zero, full, random, urandom,
tty, console, ptmx) and the pty slaves (major 136). runc and crun add the
same allowances themselves; writing them out makes the spec say what the
container may touch, whatever the runtime.

A CRI ``Device`` is looked up on the host with ``os.stat`` (following
symlinks, as CRI-O's securejoin of the host path does): a character or
block device gives one node at ``container_path``, a directory gives every
device below it (symlinks inside skipped, as runc's ``DeviceFromPath``
skips them), anything else, or nothing, is INVALID_ARGUMENT naming the
path. Permissions default to "rwm". The node keeps the host's mode and
owner.

A privileged container gets every device under the host's /dev, found by
walking it with ``lstat`` and skipping what cannot be stat'ed, the
pseudo-filesystem directories (pts, shm, fd, mqueue) and the console, as
runc's ``HostDevices``; its cgroup allows everything (CRI-O
``specAddHostDevicesIfPrivileged``).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import InvalidArgument

Device = dict[str, Any]
Rule = dict[str, Any]

_SKIP_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def _allow(kind: str, major: int | None, minor: int | None, access: str = "rwm") -> Rule:
    rule: Rule = {"allow": True, "type": kind, "access": access}
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    return rule


DEFAULT_RULES: tuple[Rule, ...] = (
    {"allow": False, "access": "rwm"},
    _allow("c", None, None, "m"),
    _allow("b", None, None, "m"),
    _allow("c", 1, 3),     # /dev/null
    _allow("c", 1, 5),     # /dev/zero
    _allow("c", 1, 7),     # /dev/full
    _allow("c", 1, 8),     # /dev/random
    _allow("c", 1, 9),     # /dev/urandom
    _allow("c", 5, 0),     # /dev/tty
    _allow("c", 5, 1),     # /dev/console
    _allow("c", 5, 2),     # /dev/ptmx
    _allow("c", 136, None),  # /dev/pts/*
)

ALLOW_ALL: tuple[Rule, ...] = ({"allow": True, "access": "rwm"},)


def _kind(mode: int) -> str | None:
    if stat.S_ISCHR(mode):
        return "c"
    if stat.S_ISBLK(mode):
        return "b"
    return None


def _node(path: str, st: os.stat_result, kind: str) -> Device:
    return {"path": path, "type": kind, "major": os.major(st.st_rdev),
            "minor": os.minor(st.st_rdev), "fileMode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid, "gid": st.st_gid}


def host_devices(root: str = "/dev") -> list[Device]:
    """Every device node under ``root``, at the same path in the container."""
    found: list[Device] = []

    def walk(directory: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone since the listing, or not ours to stat
            if stat.S_ISDIR(st.st_mode):
                if entry.name not in _SKIP_DIRS:
                    walk(entry.path)
                continue
            kind = _kind(st.st_mode)
            if kind is None or entry.name == "console":
                continue
            if os.major(st.st_rdev) == 0 and os.minor(st.st_rdev) == 0:
                continue  # not a real device (CRI-O skips 0:0 too)
            container_path = "/dev/" + posixpath.relpath(entry.path, root)
            found.append(_node(container_path, st, kind))

    walk(root)
    return found


def _permissions(value: str, host: str) -> str:
    perms = value or "rwm"
    if set(perms) - set("rwm") or len(set(perms)) != len(perms):
        raise InvalidArgument(f"device {host}: permissions {value!r} must be letters of 'rwm'")
    return perms


def cri_devices(devices: Iterable[api.Device]) -> tuple[list[Device], list[Rule]]:
    """The nodes and cgroup rules for CRI ``Device`` messages."""
    nodes: list[Device] = []
    rules: list[Rule] = []
    for device in devices:
        host = device.host_path
        if not host.startswith("/"):
            raise InvalidArgument(f"device: host_path {host!r} is not an absolute path")
        target = device.container_path or host
        if not target.startswith("/"):
            raise InvalidArgument(f"device: container_path {target!r} is not an absolute path")
        perms = _permissions(device.permissions, host)
        try:
            st = os.stat(host)
        except OSError as exc:
            raise InvalidArgument(f"device {host}: {exc.strerror}") from None
        kind = _kind(st.st_mode)
        if kind is not None:
            found = [_node(posixpath.normpath(target), st, kind)]
        elif stat.S_ISDIR(st.st_mode):
            found = [dict(d, path=posixpath.normpath(posixpath.join(
                target, posixpath.relpath(d["path"], "/dev")))) for d in host_devices(host)]
        else:
            raise InvalidArgument(f"device {host} is not a device node or a directory of them")
        for node in found:
            nodes.append(node)
            rules.append(_allow(node["type"], node["major"], node["minor"], perms))
    return nodes, rules


def devices(cri_list: Iterable[api.Device], privileged: bool,
            dev_root: str = "/dev") -> tuple[list[Device], list[Rule]]:
    """All of a container's nodes and its device cgroup rules."""
    nodes, rules = cri_devices(cri_list)
    if not privileged:
        return nodes, [*DEFAULT_RULES, *rules]
    # The CRI's nodes win over a host node at the same path.
    taken = {n["path"] for n in nodes}
    host = [d for d in host_devices(dev_root) if d["path"] not in taken]
    return host + nodes, list(ALLOW_ALL)
