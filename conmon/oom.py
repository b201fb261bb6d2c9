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

    The counter is also read as soon as the kernel signals a change, so
    the kill is recorded even if the cgroup is removed before conmon reaps
    the init (``runc delete -f``; with the systemd driver, systemd removes
    an emptied scope at once). On v1 an eventfd is registered on
    ``memory.oom_control`` through ``cgroup.event_control``; on v2 an
    inotify watch on ``memory.events``, which the kernel marks modified on
    every change of its counts. The kernel bumps the counter just after
    sending SIGKILL; by the time the victim has died the count is there.

    Should the cgroup be gone at the final read with no kill seen (a
    signal lost to a busy node), the parent's counter (the pod's, which on
    v2 counts its children's kills too) decides instead.

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


# <sys/inotify.h>
_IN_MODIFY = 0x2
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


def _inotify(path: str) -> int:
    """An inotify fd watching ``path`` for modification."""
    # Imported here: only v2 monitors need it, and each monitor's memory counts.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    if int(libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY)) < 0:
        errno = ctypes.get_errno()
        os.close(fd)
        raise OSError(errno, f"inotify_add_watch {path}")
    return fd


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


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
        self._oom_signalled = False
        self._baseline = self._count() or 0
        self._parent_baseline = self._parent_count() or 0

    def _count(self) -> int | None:
        return read_oom_kills(*self._cgroup) if self._cgroup else None

    def _parent_count(self) -> int | None:
        if not self._cgroup or self._cgroup[1] != "memory.events":
            return None
        return read_oom_kills(os.path.dirname(self._cgroup[0]), "memory.events")

    def arm(self, loop: Loop) -> None:
        """Have the loop read the counter whenever the kernel changes it."""
        if not self._cgroup:
            return
        directory, counter = self._cgroup
        try:
            if counter == "memory.events":
                self._eventfd = _inotify(os.path.join(directory, counter))
            else:
                self._eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                self._control = os.open(os.path.join(directory, counter),
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
        _drain(self._eventfd)  # the eventfd's count, or the inotify records
        count = self._count()
        if count is None and self._loop is not None:
            # The cgroup is gone (the event also fires on removal).
            self._loop.unwatch(self._eventfd)
        elif count is not None and count > self._baseline:
            self.killed = True
        elif count is not None and self._control >= 0:
            # v1 signals as the OOM begins, before its kill is counted.
            self._oom_signalled = True

    def check(self, sigkilled: bool) -> bool:
        """Final answer, read after the container's init was reaped;
        ``sigkilled``: did SIGKILL end it?

        With the cgroup gone by then (the systemd driver removes an emptied
        scope at once) the count is decided by what is left: on v2 the
        parent's count of its children's kills; on v1, whose counts are not
        hierarchical, an OOM signalled while the cgroup was there and the
        init ended by SIGKILL.
        """
        count = self._count()
        if count is not None and count > self._baseline:
            self.killed = True
        elif count is None and not self.killed:
            parent = self._parent_count()
            if parent is not None:
                self.killed = parent > self._parent_baseline
            else:
                self.killed = self._oom_signalled and sigkilled
        return self.killed

    def close(self) -> None:
        if self._loop is not None and self._eventfd >= 0:
            self._loop.unwatch(self._eventfd)
        for fd in (self._eventfd, self._control):
            if fd >= 0:
                os.close(fd)
        self._eventfd = self._control = -1
        self._loop = None
        self._eventfd = self._control = -1
