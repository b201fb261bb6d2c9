"""Pod namespaces that outlive every process: IPC and UTS pinned by bind
mounts (what CRI-O's pinns does), so a pod needs no infra process unless
its containers share a PID namespace.

util-linux ``unshare --ipc=FILE --uts=FILE hostname NAME`` creates both
namespaces, bind-mounts them onto the files and sets the pod's hostname
inside the new UTS namespace, in one exec. Unpinning is a lazy unmount of
each file; the kernel frees a namespace when its last pin or member goes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess

from ...proto.errors import Internal
from . import mounts

UNSHARE_TIMEOUT = 10.0


def pin(ns_dir: str, hostname: str, *, ipc: bool, uts: bool) -> dict[str, str]:
    """Create the requested namespaces; return {"ipc": path, "uts": path}."""
    wanted = [kind for kind, on in (("ipc", ipc), ("uts", uts)) if on]
    if not wanted:
        return {}
    os.makedirs(ns_dir, mode=0o700, exist_ok=True)
    paths = {kind: os.path.join(ns_dir, kind) for kind in wanted}
    argv = ["unshare"]
    for kind, path in paths.items():
        with open(path, "a"):
            pass  # a bind mount needs an existing target
        argv.append(f"--{kind}={path}")
    # In a new UTS namespace set the pod's hostname; otherwise just exit.
    argv += ["hostname", hostname] if uts else ["true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=UNSHARE_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unpin(ns_dir)
        raise Internal(f"cannot create pod namespaces: {exc}") from exc
    if done.returncode != 0:
        unpin(ns_dir)
        raise Internal(f"cannot create pod namespaces: {done.stderr.strip()[:300]}")
    return paths


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
