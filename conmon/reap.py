"""Reaping as a child subreaper: exit codes, and leaving no process behind.

conmon sets PR_SET_CHILD_SUBREAPER, so every process it starts, and every
process those leave orphaned outside the container's PID namespace, ends up
its child. On this kind of host PID 1 reaps late, so conmon reaps all of
them itself before it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import time
from collections.abc import Iterator

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg: int | bytes) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def become_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def exit_code(status: int) -> int:
    """A wait status as the CRI reports it: 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def reap_ready() -> Iterator[tuple[int, int]]:
    """(pid, status) of every child that has already exited."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def children() -> list[int]:
    """Our live (or not yet reaped) children, from /proc."""
    pids: list[int] = []
    task_dir = f"/proc/{os.getpid()}/task"
    for tid in os.listdir(task_dir):
        with contextlib.suppress(FileNotFoundError), \
                open(f"{task_dir}/{tid}/children", encoding="ascii") as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def wait_exit(pid: int, timeout: float) -> bool:
    """Whether child ``pid`` exits within ``timeout`` seconds; it is left
    for the caller to reap. A pidfd wakes us at the exit (Linux 5.3+);
    where there is none, the child is polled without being reaped."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return _poll_exit(pid, timeout)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))
    finally:
        os.close(pidfd)


def _poll_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def wait_all() -> None:
    """Block until no child is left: adopted ones die on their own schedule."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def kill_all() -> None:
    """SIGKILL every child and reap them all."""
    while pids := children():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
