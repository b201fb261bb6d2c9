"""Pod namespaces that outlive every process: IPC and UTS pinned by bind
mounts (what CRI-O's pinns does), so a pod needs no infra process unless
its containers share a PID namespace.

As the net pool makes a network namespace (workers/net/netns.py), a
short-lived thread calls ``unshare(CLONE_NEWIPC | CLONE_NEWUTS)``, which
moves only that thread, sets the pod's hostname in its new UTS namespace,
bind-mounts ``/proc/thread-self/ns/{ipc,uts}`` onto the files, and exits:
no exec (this was util-linux ``unshare --ipc=FILE --uts=FILE hostname
NAME``, two execs per pod), and no thread of the pool is ever moved.
Unpinning is a lazy unmount of each file; the kernel frees a namespace when
its last pin or member goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

from ...proto.errors import Internal
from . import mounts

CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
MS_BIND = 4096
_FLAGS = {"ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}

_libc = ctypes.CDLL(None, use_errno=True)


def pin(ns_dir: str, hostname: str, *, ipc: bool, uts: bool) -> dict[str, str]:
    """Create the requested namespaces; return {"ipc": path, "uts": path}."""
    wanted = [kind for kind, on in (("ipc", ipc), ("uts", uts)) if on]
    if not wanted:
        return {}
    os.makedirs(ns_dir, mode=0o700, exist_ok=True)
    paths = {kind: os.path.join(ns_dir, kind) for kind in wanted}
    for path in paths.values():
        with open(path, "a"):
            pass  # a bind mount needs an existing target
    failure: list[OSError] = []
    thread = threading.Thread(target=_pin_in_thread, args=(paths, hostname, failure),
                              name="podns-pin", daemon=True)
    thread.start()
    thread.join()
    if failure:
        unpin(ns_dir)
        raise Internal(f"cannot create pod namespaces: {failure[0]}")
    return paths


def _pin_in_thread(paths: dict[str, str], hostname: str, failure: list[OSError]) -> None:
    # This thread ends in the new namespaces and is thrown away with them;
    # that is what keeps the unshare from reaching any other thread.
    try:
        flags = 0
        for kind in paths:
            flags |= _FLAGS[kind]
        if _libc.unshare(flags) != 0:
            raise _os_error("unshare")
        if "uts" in paths:
            name = hostname.encode()
            if _libc.sethostname(name, len(name)) != 0:
                raise _os_error("sethostname")
        for kind, path in paths.items():
            if _libc.mount(f"/proc/thread-self/ns/{kind}".encode(), os.fsencode(path), b"none",
                           MS_BIND, None) != 0:
                raise _os_error(f"bind mount of the {kind} namespace on {path}")
    except OSError as exc:
        failure.append(exc)


def _os_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def unpin(ns_dir: str) -> None:
    """Release every pinned namespace under ``ns_dir`` (idempotent)."""
    for kind in ("ipc", "uts"):
        path = os.path.join(ns_dir, kind)
        if os.path.exists(path):
            mounts.unmount(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(ns_dir)
