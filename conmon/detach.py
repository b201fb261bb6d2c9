"""Detaching from the spawner, so conmon outlives every podvisor process.

The spawned process forks once and exits at once: the spawner reaps it
immediately, and the fork is orphaned (reparented to the nearest subreaper
or PID 1), so no podvisor process is ever its parent. The fork calls
setsid(): a session and process group of its own, so signals to the
spawner's group or terminal never reach it, and as it never opens a tty
(the pty master arrives over a socket) it never gets a controlling one.

It then owns nothing of the spawner's: fds 0 and 1 are /dev/null, fd 2 is
its own log, every other inherited fd is closed except the ones it is told
to keep. Last it becomes PR_SET_CHILD_SUBREAPER, so the container's init
(orphaned by the runtime's ``create``) and anything else orphaned below it
is reparented to conmon and reaped by it.
"""

from __future__ import annotations

import contextlib
import os

from .reap import become_subreaper


def detach(keep: set[int], stderr_path: str) -> None:
    """Return in the detached child; the calling process exits 0."""
    if os.fork():
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    errors = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(errors, 2)
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    for fd in keep:
        os.set_inheritable(fd, False)
    become_subreaper()
