"""Fencing off the workers of a supervisor that died.

Every worker holds ``<runroot>/workers.fence`` shared (proto/envelope.py,
"Fence"). A starting supervisor takes it exclusively before it spawns its
own workers: while an old worker lives, the lock is refused, and the old
worker is found in /proc/locks and killed. Old workers normally die with
their supervisor (PR_SET_PDEATHSIG), so this usually costs one flock call;
it is what guarantees that nothing of the old generation still acts once
the new supervisor serves.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time

from ..proto.envelope import FENCE_FILE

log = logging.getLogger(__name__)

POLL = 0.01


class FenceError(Exception):
    """Old workers outlived the fence's timeout."""


def fence_old_workers(runroot: str, timeout: float) -> list[int]:
    """Wait until no worker of an earlier supervisor lives; return those killed."""
    fd = os.open(os.path.join(runroot, FENCE_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    killed: list[int] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            for pid in holders(fd):
                if pid not in killed and _is_worker(pid):
                    log.warning("Killing worker %d of an earlier supervisor", pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            if time.monotonic() >= deadline:
                raise FenceError(f"workers of an earlier supervisor still hold "
                                 f"{FENCE_FILE} after {timeout:.0f} s")
            time.sleep(POLL)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return killed


def holders(fd: int) -> list[int]:
    """Pids holding a flock on the file of ``fd``, from /proc/locks."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    with open("/proc/locks", encoding="ascii") as f:
        for line in f:
            words = line.split()
            # "1: FLOCK  ADVISORY  READ 1234 00:2d:5678 0 EOF"; blocked
            # waiters have "->" after the number and shift by one.
            if "->" in words:
                continue
            if len(words) >= 6 and words[1] == "FLOCK" and words[5] == inode:
                pids.append(int(words[4]))
    return pids


def _is_worker(pid: int) -> bool:
    """Only a podvisor worker (by its process title) is ever killed here."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read()
    except OSError:
        return False
    return title.startswith(b"podvisor: ") and b" worker " in title
