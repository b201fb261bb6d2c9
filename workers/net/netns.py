"""Named network namespaces, pinned by bind mounts under ``<runroot>/netns``.

A pod's namespace is the file ``<runroot>/netns/<pod id>`` with the nsfs
inode of a fresh network namespace bind-mounted on it. The mount, not any
process, keeps the namespace alive, so it outlives the worker that made it
and the supervisor (design.md: workers are disposable); it goes only when
``remove`` unmounts it or the node reboots.

Creation follows containerd's ``pkg/netns`` (itself from CNI's testutils):
a short-lived thread calls ``unshare(CLONE_NEWNET)``, which moves only that
thread, bind-mounts ``/proc/thread-self/ns/net`` onto the file, brings the
loopback up with an ioctl on a socket opened inside the new namespace
(rtnl.py), and exits. No fork: the worker is multi-threaded, and the
namespace switch never touches the thread pool's threads.

A pod with its own user namespace needs its network namespace owned by it
(runc joins it from inside, and mounts sysfs over it): then a helper
process enters the pinned user namespace and unshares there
(``_create_in_userns``); this process pins what it made.

Invariants
    - A path under the dir is either a mounted namespace, or a leftover of a
      creation that died between ``open`` and ``mount``; ``exists`` tells
      them apart and ``remove`` handles both.
    - ``remove`` is idempotent: a missing file is success.
    - Callers serialise per pod (locks.py); two different pods never share
      a path, so nothing here needs a lock.
"""

from __future__ import annotations

import contextlib
import errno
import os

from .. import mounts, nsthread, userns
from . import rtnl


class NamespaceError(OSError):
    """A namespace could not be created or removed; the message names it."""


def path_for(netns_dir: str, pod_id: str) -> str:
    return os.path.join(netns_dir, pod_id)


def exists(path: str) -> bool:
    """True if ``path`` is a mounted network namespace (nsthread.is_pinned)."""
    return nsthread.is_pinned(path)


def create(path: str, userns_path: str | None = None) -> None:
    """Create and pin a new network namespace at ``path`` with ``lo`` up,
    owned by the pinned user namespace ``userns_path`` when given.

    Raises ``FileExistsError`` if ``path`` exists, ``NamespaceError`` on
    any kernel refusal; a failed creation leaves no file behind.
    """
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if userns_path:
        _create_in_userns(path, userns_path)
        return
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)
    try:
        nsthread.run_unshared(nsthread.CLONE_NEWNET, lambda: _inside(path), "netns-create")
    except OSError as exc:
        remove(path)
        raise NamespaceError(exc.errno or errno.EIO,
                             f"new network namespace at {path}: {exc.strerror}") from exc
    except BaseException:
        remove(path)
        raise


def _inside(path: str) -> None:
    nsthread.pin("net", path)
    # The socket is opened by this thread, so it is in the new namespace,
    # where lo starts down.
    rtnl.link_up("lo")


def _create_in_userns(path: str, userns_path: str) -> None:
    # A thread cannot enter a user namespace (setns refuses a threaded
    # process), so a helper process does: it joins the pod's user
    # namespace, unshares the network one, brings lo up as its root, and is
    # held while this process, host root, pins it (workers/userns.py).
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)
    try:
        userns.pin_inside(userns_path, {"net": path}, "ip link set lo up && ")
    except userns.UsernsError as exc:
        remove(path)
        raise NamespaceError(exc.errno, f"network namespace {path} in user namespace "
                                        f"{userns_path}: {exc.strerror}") from exc


def remove(path: str) -> None:
    """Unpin and delete the namespace at ``path``; a missing path is fine.

    MNT_DETACH lets the unmount succeed while a plugin or a container still
    holds the namespace open; the namespace itself dies with its last user.
    """
    try:
        # Not a mount point (a half-made leftover) or gone: nothing to do.
        mounts.unmount(path)
    except OSError as exc:
        raise NamespaceError(exc.errno or errno.EIO, f"unmount of network namespace {path}: "
                                                     f"{os.strerror(exc.errno or errno.EIO)}"
                             ) from exc
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def list_names(netns_dir: str) -> list[str]:
    """Names of the entries in ``netns_dir`` (pinned or leftover)."""
    try:
        return sorted(os.listdir(netns_dir))
    except FileNotFoundError:
        return []
