"""glibc malloc tuning every long-lived podvisor process applies (stdlib only).

Why: glibc gives each thread that allocates while another holds an arena's
lock an arena of its own, up to eight per core. A worker's op threads
(``max_inflight`` of them) each fill one: in a runtime worker that had
started 10 pods, nine arenas held 1.1 MiB private each, a third of its
PSS (measured, ``/proc/<pid>/smaps``). Python threads allocate under the
GIL, so one arena costs them little waiting; the supervisor keeps a second
for gRPC's C threads, which allocate without it.

And the memory an op frees stays in malloc's free lists until
``malloc_trim`` hands it back, so a worker trims once a burst of ops is over.

Without glibc (no ``mallopt`` or ``malloc_trim``), both are no-ops.
"""

from __future__ import annotations

import ctypes

# mallopt(3): M_ARENA_MAX.
_M_ARENA_MAX = -8

_libc = ctypes.CDLL(None)
_mallopt = getattr(_libc, "mallopt", None)
_malloc_trim = getattr(_libc, "malloc_trim", None)


def limit_arenas(arenas: int) -> None:
    """Cap malloc's arenas at ``arenas``; call before the process starts threads.

    Forked children inherit the cap.
    """
    if _mallopt is not None:
        _mallopt(_M_ARENA_MAX, arenas)


def can_trim() -> bool:
    """Whether this libc has malloc_trim (glibc)."""
    return _malloc_trim is not None


def trim() -> bool:
    """Give the free pages of every arena back to the kernel; True if any went."""
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))
