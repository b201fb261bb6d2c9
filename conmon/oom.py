"""Did the kernel OOM-kill anything in the container's memory cgroup?

What we read, and why
    The kernel counts OOM kills per memory cgroup: ``oom_kill`` in
    ``memory.oom_control`` on cgroup v1 (Linux 4.13+), in ``memory.events``
    on v2. ``memory.failcnt`` is not used: it counts hits of the limit that
    reclaim resolved, which kill nothing. The counter is read when the
    container is created (the baseline, 0 for a fresh cgroup) and again when
    its init has been reaped; more kills than the baseline means OOMKilled,
    whichever process of the container the kernel chose (CRI-O reports it
    the same way).

    On v1 an eventfd is also registered on ``memory.oom_control`` through
    ``cgroup.event_control``: the loop reads the counter as soon as the
    kernel signals an OOM, so the kill is recorded even if someone removes
    the cgroup (``runc delete -f``) before conmon reaps the init. The kernel
    bumps the counter just after sending SIGKILL; by the time the victim has
    died and been reaped the count is there.

Failure behaviour: no memory cgroup, or one already gone, reads as "no OOM
kill seen"; nothing here raises once the watch is built.
"""

from __future__ import annotations

import contextlib
import logging
import os

from .loop import READ, Loop

log = logging.getLogger(__name__)


def _memory_mounts() -> tuple[str | None, str | None]:
    """(v1 memory hierarchy mount, cgroup2 mount) from our mountinfo."""
    v1 = v2 = None
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields, _, tail = line.partition(" - ")
            parts = fields.split()
            fstype, _source, options = [*tail.split(), "", "", ""][:3]
            if fstype == "cgroup" and "memory" in options.split(",") and parts[3] == "/":
                v1 = parts[4]
            elif fstype == "cgroup2" and v2 is None:
                v2 = parts[4]
    return v1, v2


def memory_cgroup(pid: int) -> tuple[str, str] | None:
    """(directory, counter file name) of ``pid``'s memory cgroup."""
    v1_mount, v2_mount = _memory_mounts()
    unified = None
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        for line in f:
            hierarchy, controllers, path = line.rstrip("\n").split(":", 2)
            if v1_mount and "memory" in controllers.split(","):
                return v1_mount + path.rstrip("/"), "memory.oom_control"
            if hierarchy == "0":
                unified = path
    if v2_mount and unified is not None and v1_mount is None:
        return v2_mount + unified.rstrip("/"), "memory.events"
    return None


def read_oom_kills(directory: str, counter: str) -> int | None:
    try:
        with open(os.path.join(directory, counter), encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except OSError:
        return None
    return None


class OomWatch:
    """The OOM state of one container, from its creation to its exit."""

    def __init__(self, pid: int) -> None:
        self.killed = False
        self._loop: Loop | None = None
        self._eventfd = -1
        self._control = -1
        try:
            found = memory_cgroup(pid)
        except OSError:
            found = None
        if found is None:
            log.warning("no memory cgroup for pid %d: OOM kills will not be seen", pid)
        self._cgroup = found
        self._baseline = self._count() or 0

    def _count(self) -> int | None:
        return read_oom_kills(*self._cgroup) if self._cgroup else None

    def arm(self, loop: Loop) -> None:
        """Ask cgroup v1 for OOM events (v2 relies on the final read)."""
        if not self._cgroup or self._cgroup[1] != "memory.oom_control":
            return
        directory = self._cgroup[0]
        try:
            self._eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._control = os.open(os.path.join(directory, "memory.oom_control"),
                                    os.O_RDONLY | os.O_CLOEXEC)
            with open(os.path.join(directory, "cgroup.event_control"), "w",
                      encoding="ascii") as f:
                f.write(f"{self._eventfd} {self._control}")
        except OSError as exc:
            log.warning("no OOM events from %s (%s); reading the counter at exit",
                        directory, exc)
            self.close()
            return
        self._loop = loop
        loop.watch(self._eventfd, READ, self._on_event)

    def _on_event(self, _mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._eventfd)
        count = self._count()
        if count is None and self._loop is not None:
            # The cgroup is gone (the event also fires on removal).
            self._loop.unwatch(self._eventfd)
        elif count is not None and count > self._baseline:
            self.killed = True

    def check(self) -> bool:
        """Final answer, read after the container's init was reaped."""
        count = self._count()
        if count is not None and count > self._baseline:
            self.killed = True
        return self.killed

    def close(self) -> None:
        if self._loop is not None and self._eventfd >= 0:
            self._loop.unwatch(self._eventfd)
        for fd in (self._eventfd, self._control):
            if fd >= 0:
                os.close(fd)
        self._eventfd = self._control = -1
