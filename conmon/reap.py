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
import signal
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
