"""User namespaces and idmapped mounts, shared by the pools that need them
(runtime: the pod's pinned user namespace, its ipc/uts and volumes; net: the
pod's network namespace; storage: the rootfs layers).

A user namespace is made by a *holder*: a helper process (util-linux
``unshare``/``nsenter`` exec'd, never a bare fork of a threaded worker) that
creates or enters the namespaces, prints one line and then blocks reading
its stdin. While it blocks, this process, still host root in the host's
namespaces, writes its id maps and bind-mounts ``/proc/<pid>/ns/<kind>``
onto pin files; then closing the holder's stdin ends it and it is reaped
(``wait``). A pinned namespace outlives every process, like the
network namespaces of workers/net/netns.py.

Why the other namespaces of a pod are made *inside* its user namespace: a
namespace belongs to the user namespace its creator was in, and runc or
crun running in the pod's user namespace may only join namespaces that
user namespace owns (and mount sysfs only over a network namespace it
owns).

Idmapped mounts (``mount_setattr(MOUNT_ATTR_IDMAP)``, Linux 5.12+) show
files through a user namespace's map: on disk uid ``u`` reads as
``u + host_id`` (for ``u`` below ``length``). They need a user namespace
fd, not a running process, and a filesystem that allows them (ext4, xfs,
btrfs: yes, tmpfs from Linux 6.3; overlayfs itself: no, so the storage pool idmaps its
layers under the overlay instead). ``probe`` answers, once, whether a
directory's filesystem can.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
import subprocess
from collections.abc import Iterator, Sequence

from ..proto.idmap import IdRange
from . import mounts

# Syscall numbers (one table for every architecture but alpha since 5.1/5.12).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 0x1
_OPEN_TREE_CLOEXEC = 0o2000000
_AT_RECURSIVE = 0x8000
_AT_EMPTY_PATH = 0x1000
_AT_FDCWD = -100
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000
_MOUNT_ATTR_SIZE = 32  # struct mount_attr: attr_set, attr_clr, propagation, userns_fd

# A holder that does not answer within this long is killed.
HOLDER_TIMEOUT = 10.0
# The helper's script: say it is in place, then wait for stdin to close.
_HOLD = 'echo ready; read -r _'
# Any map will do to learn whether a filesystem takes idmapped mounts.
PROBE_RANGE = IdRange(container_id=0, host_id=1000, length=1)

_libc = ctypes.CDLL(None, use_errno=True)


class UsernsError(OSError):
    """A user namespace, a pin or an idmapped mount could not be made;
    the message names which."""


def _error(what: str, err: int | None = None) -> UsernsError:
    err = ctypes.get_errno() if err is None else err
    return UsernsError(err, f"{what}: {os.strerror(err)}")


def _syscall(number: int, *args: int | bytes) -> int:
    cargs = [ctypes.c_long(a) if isinstance(a, int) else ctypes.c_char_p(a) for a in args]
    return int(_libc.syscall(ctypes.c_long(number), *cargs))


def bind(source: str, target: str) -> None:
    """workers/mounts.py's, failing as a ``UsernsError``."""
    try:
        mounts.bind(source, target)
    except OSError as exc:
        raise UsernsError(exc.errno or errno.EIO, exc.strerror or str(exc)) from exc


def unmount(target: str) -> bool:
    """workers/mounts.py's lazy unmount, failing as a ``UsernsError``."""
    try:
        return mounts.unmount(target)
    except OSError as exc:
        raise UsernsError(exc.errno or errno.EIO, exc.strerror or str(exc)) from exc


@contextlib.contextmanager
def holder(argv: Sequence[str]) -> Iterator[int]:
    """Run ``argv`` (which must end in the hold script) and yield its pid
    once it said it is ready; end and reap it on the way out."""
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, close_fds=True)
    except OSError as exc:
        raise UsernsError(exc.errno or errno.EIO, f"cannot run {argv[0]}: {exc}") from exc
    try:
        assert proc.stdout is not None
        # A helper that never says it is ready (stuck before its exec) must
        # not hold a worker's thread: it is killed past the timeout.
        said = select.select([proc.stdout], [], [], HOLDER_TIMEOUT)[0]
        if not said or proc.stdout.readline().strip() != b"ready":
            proc.kill()
            try:
                _, err = proc.communicate(timeout=HOLDER_TIMEOUT)
            except subprocess.TimeoutExpired:
                err = b"(no answer)"  # a descendant holds its stderr open
            raise UsernsError(errno.EIO, f"{argv[0]} failed: "
                                         f"{err.decode(errors='replace').strip()[:300]}")
        yield proc.pid
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=HOLDER_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _write_maps(pid: int, uids: Sequence[IdRange], gids: Sequence[IdRange]) -> None:
    for name, ranges in (("uid_map", uids), ("gid_map", gids)):
        try:
            with open(f"/proc/{pid}/{name}", "w", encoding="ascii") as f:
                f.write("".join(r.line() for r in ranges))
        except OSError as exc:
            raise UsernsError(exc.errno or errno.EIO, f"writing {name} of a new user "
                                                      f"namespace: {exc.strerror}") from exc


def _new_userns_argv() -> list[str]:
    return ["unshare", "--user", "--", "sh", "-c", _HOLD]


def pin(path: str, uids: Sequence[IdRange], gids: Sequence[IdRange]) -> None:
    """Create a user namespace with these maps and pin it at ``path``."""
    with open(path, "a"):
        pass  # a bind mount needs an existing target
    try:
        with holder(_new_userns_argv()) as pid:
            _write_maps(pid, uids, gids)
            bind(f"/proc/{pid}/ns/user", path)
    except BaseException:
        release(path)
        raise


def release(path: str) -> None:
    """Unpin and delete a pinned namespace file (idempotent)."""
    unmount(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def temporary(uids: Sequence[IdRange], gids: Sequence[IdRange]) -> Iterator[int]:
    """An fd of a throwaway user namespace with these maps (for idmapped
    mounts), closed on the way out; no pin, no process left."""
    with holder(_new_userns_argv()) as pid:
        _write_maps(pid, uids, gids)
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def pin_inside(userns_path: str, pins: dict[str, str], script: str = "",
               args: Sequence[str] = ()) -> None:
    """Create namespaces of the kinds in ``pins`` ({"net"|"ipc"|"uts": file})
    owned by the pinned user namespace ``userns_path``, run ``script`` in
    them first (as the namespace's root, with ``args`` as $1...), and pin
    each at its file."""
    argv = ["nsenter", f"--user={userns_path}", "--", "unshare"]
    argv += [f"--{kind}" for kind in pins]
    # A failing script ends the helper at once (no "ready"), not at the timeout.
    argv += ["--", "sh", "-c", f"{{ {script}true; }} || exit 1; {_HOLD}", "sh", *args]
    for path in pins.values():
        with open(path, "a"):
            pass
    try:
        with holder(argv) as pid:
            for kind, path in pins.items():
                bind(f"/proc/{pid}/ns/{kind}", path)
    except BaseException:
        for path in pins.values():
            release(path)
        raise


def _idmapped_tree(source: str, userns_fd: int, recursive: bool) -> int:
    """A detached clone of the mount (tree) at ``source``, seen through
    ``userns_fd``'s maps; the caller closes the fd it answers."""
    flags = _AT_RECURSIVE if recursive else 0
    tree = _syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source),
                    _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | flags)
    if tree < 0:
        raise _error(f"open_tree of {source}")
    attr = ctypes.create_string_buffer(
        struct.pack("QQQQ", _MOUNT_ATTR_IDMAP, 0, 0, userns_fd), _MOUNT_ATTR_SIZE)
    if _libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_long(tree), b"",
                     ctypes.c_long(_AT_EMPTY_PATH | flags), attr,
                     ctypes.c_long(_MOUNT_ATTR_SIZE)) != 0:
        error = _error(f"idmapped mount of {source}")
        os.close(tree)
        raise error
    return tree


def idmapped_clone(source: str, target: str, userns_fd: int) -> None:
    """Attach at ``target`` (an existing dir or file) a recursive clone of
    the mount tree at ``source``, seen through ``userns_fd``'s maps."""
    tree = _idmapped_tree(source, userns_fd, recursive=True)
    try:
        if _syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(target),
                    _MOVE_MOUNT_F_EMPTY_PATH) != 0:
            raise _error(f"attaching the idmapped mount of {source} at {target}")
    finally:
        os.close(tree)


def probe(directory: str) -> str | None:
    """Can ``directory``'s filesystem be idmapped? None if so, else why not.
    Nothing is left attached: the clone is never moved into place."""
    try:
        with temporary([PROBE_RANGE], [PROBE_RANGE]) as fd:
            os.close(_idmapped_tree(directory, fd, recursive=False))
    except UsernsError as exc:
        return str(exc)
    return None


def map_id(value: int, ranges: Sequence[IdRange]) -> int | None:
    """The host id of container id ``value``, or None if unmapped."""
    for r in ranges:
        if r.container_id <= value < r.container_id + r.length:
            return r.host_id + value - r.container_id
    return None
