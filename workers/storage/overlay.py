"""Overlay mounts, and what /proc/self/mountinfo says is mounted.

Two ways to mount, chosen once per process by probing the kernel:

- The mount API (fsopen, fsconfig, fsmount, move_mount) with overlay's
  ``lowerdir+`` key (Linux 6.8 and later): one fsconfig call per lower
  directory, so no option string limits the stack; overlayfs itself stacks
  at most 500 lower layers. The kernel's own messages from the fs context
  go into the error.
- mount(2) otherwise: lowerdir, upperdir and workdir share one option
  string of at most a page (4095 bytes). The storage pool passes short
  links (``<root>/storage/l/<12 chars>``) to keep each lower near 40 bytes,
  so about a hundred layers fit on the default root; a longer stack is
  refused with FailedPrecondition saying how long it was and what fits.

Lower directories are given top layer first, as overlayfs wants them.
``index=off`` as containers/storage does: the layers are shared by many
mounts and must not carry per-mount origin xattrs.

Unmounting detaches (MNT_DETACH), again like containers/storage: a process
still inside the rootfs keeps its view and the tree is freed when it leaves,
so removal never fails on EBUSY.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
from collections.abc import Sequence
from typing import NoReturn

from ...proto.errors import FailedPrecondition, Internal, InvalidArgument

MAX_LOWER_LAYERS = 500  # OVL_MAX_STACK

# Syscall numbers of the mount API; one table for every architecture but
# alpha since Linux 5.1.
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 0x1
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_FSMOUNT_CLOEXEC = 0x1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100
_MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)
_OCTAL = re.compile(r"\\([0-7]{3})")


def _syscall(number: int, *args: int | bytes | None) -> int:
    cargs = [ctypes.c_long(a) if isinstance(a, int) else ctypes.c_char_p(a) for a in args]
    return int(_libc.syscall(ctypes.c_long(number), *cargs))


def _fs_log(fs_fd: int) -> str:
    """The messages the kernel queued on an fs context, e.g. 'overlay: …'."""
    lines = []
    while True:
        try:
            line = os.read(fs_fd, 1024)
        except OSError:
            break
        if not line:
            break
        lines.append(line.decode(errors="replace").removeprefix("e ").strip())
    return "; ".join(lines)


@functools.cache
def has_lowerdir_append() -> bool:
    """Whether this kernel takes overlay lower dirs one fsconfig call at a time.

    Before Linux 6.5 overlayfs parsed options the old way, behind the mount
    API's generic wrapper, which accepts any key and fails only at the mount
    (Debian 12's 6.1 takes "lowerdir+" here, then refuses it). So a key no
    kernel knows must be refused first, or the answer means nothing.
    """
    fs_fd = _syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
    if fs_fd < 0:
        return False  # no mount API (or a seccomp filter hides it)
    try:
        if _syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_SET_STRING, b"podvisor-no-such-option",
                    b"1", 0) == 0:
            return False  # the generic wrapper: it would take anything
        return _syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_SET_STRING, b"lowerdir+", b"/", 0) == 0
    finally:
        os.close(fs_fd)


def selinux_enabled() -> bool:
    return os.path.exists("/sys/fs/selinux/enforce")


def mount(target: str, lowers: Sequence[str], upper: str, work: str,
          label: str | None = None) -> None:
    """Mount an overlay at ``target``; ``lowers`` are ordered top first."""
    if not lowers:
        raise InvalidArgument("an overlay needs at least one lower directory")
    if len(lowers) > MAX_LOWER_LAYERS:
        raise FailedPrecondition(
            f"the image has {len(lowers)} layers; overlayfs stacks at most "
            f"{MAX_LOWER_LAYERS}")
    if has_lowerdir_append():
        mount_api(target, lowers, upper, work, label)
    else:
        mount_legacy(target, lowers, upper, work, label)


def mount_api(target: str, lowers: Sequence[str], upper: str, work: str,
              label: str | None = None) -> None:
    """Mount with fsopen/fsconfig/fsmount/move_mount (needs Linux 6.8+)."""
    fs_fd = _syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
    if fs_fd < 0:
        _raise_errno(f"fsopen(overlay) for {target}")
    try:
        params = [(b"lowerdir+", os.fsencode(p)) for p in lowers]
        params += [(b"upperdir", os.fsencode(upper)), (b"workdir", os.fsencode(work)),
                   (b"index", b"off")]
        if label is not None:
            params.append((b"context", label.encode()))
        for key, value in params:
            if _syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_SET_STRING, key, value, 0) < 0:
                _raise_errno(f"overlay option {key.decode()}={os.fsdecode(value)} for {target}",
                             _fs_log(fs_fd))
        if _syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_CMD_CREATE, None, None, 0) < 0:
            _raise_errno(f"creating the overlay for {target}", _fs_log(fs_fd))
        mnt_fd = _syscall(_SYS_FSMOUNT, fs_fd, _FSMOUNT_CLOEXEC, 0)
        if mnt_fd < 0:
            _raise_errno(f"fsmount of the overlay for {target}", _fs_log(fs_fd))
    finally:
        os.close(fs_fd)
    try:
        if _syscall(_SYS_MOVE_MOUNT, mnt_fd, b"", _AT_FDCWD, os.fsencode(target),
                    _MOVE_MOUNT_F_EMPTY_PATH) < 0:
            _raise_errno(f"attaching the overlay at {target}")
    finally:
        os.close(mnt_fd)


def legacy_options(lowers: Sequence[str], upper: str, work: str,
                   label: str | None = None) -> str:
    options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},index=off"
    if label is not None:
        options += f',context="{label}"'
    return options


def mount_legacy(target: str, lowers: Sequence[str], upper: str, work: str,
                 label: str | None = None) -> None:
    """Mount with mount(2): the whole option string must fit in one page."""
    data = os.fsencode(legacy_options(lowers, upper, work, label))
    limit = os.sysconf("SC_PAGESIZE") - 1
    if len(data) > limit:
        overhead = len(os.fsencode(legacy_options([], upper, work, label)))
        per_layer = max(1, (len(data) - overhead) // len(lowers))
        raise FailedPrecondition(
            f"the image has {len(lowers)} layers, but this kernel takes overlay options "
            f"in one mount(2) page of {limit} bytes, which holds about "
            f"{max(0, (limit - overhead) // per_layer)} layers here; use Linux 6.8 or later "
            "(lowerdir+), or a shorter storage root")
    if _libc.mount(b"overlay", os.fsencode(target), b"overlay", ctypes.c_ulong(0), data) != 0:
        _raise_errno(f"mount -t overlay at {target}")


def unmount(target: str) -> bool:
    """Detach every mount stacked on ``target``; whether there was one."""
    was = False
    while mounted(target):
        was = True
        if _libc.umount2(os.fsencode(target), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:  # not a mount point after all (raced)
                break
            _raise_errno(f"unmounting {target}")
    return was


def mount_points() -> set[str]:
    """Every mount point in this process's mount namespace."""
    points = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ", 5)
            if len(fields) > 4:
                points.add(_unescape(fields[4]))
    return points


def mounted(target: str) -> bool:
    return _canonical(target) in mount_points()


def _canonical(path: str) -> str:
    # Resolve the parent only: the target itself may be a mount whose root
    # is not what the path would resolve to.
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(head), tail)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def _raise_errno(what: str, kernel_says: str = "") -> NoReturn:
    err = ctypes.get_errno()
    # overlayfs reports most mount errors to the kernel log only.
    detail = f": {kernel_says}" if kernel_says else "; the kernel log (dmesg) may say why"
    raise Internal(f"{what} failed: {os.strerror(err)} (errno {err}){detail}")
