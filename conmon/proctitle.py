"""The process title: ``podvisor-conmon <container id>`` in ps.

Two places hold it. ``comm`` (top, /proc/PID/comm, 15 bytes) gets
``podvisor-conmon``, exactly 15. The command line (ps -ef,
/proc/PID/cmdline) is the memory between the kernel's arg_start and arg_end
(fields 48 and 49 of /proc/self/stat): the original argv strings, which
CPython copied at startup and never reads again. Writing the title there,
NUL-padded, is what the setproctitle library does, without moving environ:
the title is cut to the original argv's length, which podvisor-conmon's
long command line always exceeds. prctl(PR_SET_MM) would allow a longer
one but needs CAP_SYS_RESOURCE, which podvisor may lack.

Failure behaviour: best effort; a title that can't be set changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes

from .reap import PR_SET_NAME, prctl


def set_title(title: str) -> None:
    raw = title.encode()
    with contextlib.suppress(OSError):
        prctl(PR_SET_NAME, raw[:15])
    with contextlib.suppress(OSError, ValueError, IndexError):
        start, end = _argv_area()
        size = end - start
        if size <= 1:
            return
        ctypes.memmove(start, raw[:size - 1].ljust(size, b"\0"), size)


def argv_room() -> int:
    """Bytes a title may take, its NUL included (0 if unknown). A process
    forked without exec (conmon/zygote.py) has its parent's argv area."""
    try:
        start, end = _argv_area()
    except (OSError, ValueError, IndexError):
        return 0
    return end - start


def _argv_area() -> tuple[int, int]:
    with open("/proc/self/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 of the stat line.
    return int(fields[45]), int(fields[46])
