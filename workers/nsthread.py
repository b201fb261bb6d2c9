"""New namespaces made from a short-lived thread, as containerd's
``pkg/netns`` makes them: unshare(2) moves only the calling thread, so a
thread made for the purpose unshares, does what must happen inside (pin
``/proc/thread-self/ns/<kind>`` on a file, set the hostname, bring ``lo``
up), and exits. No other thread of a worker ever changes namespace, and
nothing is forked or exec'd. (A user namespace cannot be entered this way:
setns refuses a threaded process; workers/userns.py uses a helper process.)
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable

from . import mounts

CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def nsfs_dev() -> int:
    """The device of nsfs, which has one superblock for every namespace:
    a file with it is a pinned namespace (or an open one)."""
    return os.stat("/proc/self/ns/net").st_dev


def is_pinned(path: str) -> bool:
    """True if ``path`` is a mounted namespace, not a leftover file of a pin
    that died between ``open`` and ``mount`` (or nothing)."""
    try:
        return os.stat(path).st_dev == nsfs_dev()
    except FileNotFoundError:
        return False


def run_unshared(flags: int, inside: Callable[[], None], name: str) -> None:
    """Run ``inside`` in a new thread that first unshares ``flags``; raise
    what it raised once the thread (and its namespaces' hold) is gone."""
    failure: list[BaseException] = []

    def body() -> None:
        try:
            if _libc.unshare(flags) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare: {os.strerror(err)}")
            inside()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def pin(kind: str, path: str) -> None:
    """Inside ``run_unshared``: pin the thread's ``kind`` namespace
    ("net", "ipc", "uts") at the existing file ``path``."""
    mounts.bind(f"/proc/thread-self/ns/{kind}", path)
