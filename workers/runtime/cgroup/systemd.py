"""Slices and scopes through systemd's D-Bus API (org.freedesktop.systemd1).

Where systemd runs, it owns the cgroup tree: a slice or scope that systemd
did not make is a stray it may move processes out of or remove. So under
the systemd cgroup driver podvisor asks the manager for transient units
(StartTransientUnit), as the kubelet, runc and CRI-O do, and stops them the
same way. The properties follow theirs (see ``start_slice`` and
``start_scope``), so a slice podvisor makes and one the kubelet makes are
interchangeable.

Every call enqueues a job; the job is done when the manager emits
``JobRemoved`` for it, with a result ("done", "failed", "canceled",
"timeout", "dependency", "skipped"). systemd sends that signal to the client
that enqueued the job even when nobody called ``Subscribe()`` (it tracks the
requester on the job), so a match rule is enough. The match is added before
the call, so a job that ends before its reply is read is not missed.

One ``Systemd`` is one blocking connection to the system bus (jeepney); it
is not thread-safe. Every wait is bounded by a ``time.monotonic()``
deadline. Errors are podvisor's bus errors: ``FailedPrecondition`` when
systemd is absent or refuses, ``DeadlineExceeded`` when it does not answer
in time, ``Unavailable`` when the bus connection breaks.
"""

from __future__ import annotations

import collections
import contextlib
import os
import stat
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from jeepney import (  # type: ignore[import-untyped]
    DBusAddress,
    DBusErrorResponse,
    MatchRule,
    Message,
    Properties,
    message_bus,
    new_method_call,
)
from jeepney.io.blocking import open_dbus_connection  # type: ignore[import-untyped]
from jeepney.wrappers import unwrap_msg  # type: ignore[import-untyped]

from ....proto.errors import (
    AlreadyExists,
    BusError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    shorten,
)
from . import slices

# sd_booted(3): systemd is the init system when this is a directory.
RUN_DIR = "/run/systemd/system"

_MANAGER = "org.freedesktop.systemd1.Manager"
_UNIT = "org.freedesktop.systemd1.Unit"
_SYSTEMD = DBusAddress("/org/freedesktop/systemd1", bus_name="org.freedesktop.systemd1",
                       interface=_MANAGER)
_NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
_UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
_UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"

# A unit property as StartTransientUnit takes it: name, D-Bus signature, value.
Property = tuple[str, str, object]

# The bus filters by sender (a well-known name it resolves); locally the
# sender is systemd's unique name, so the local rule leaves it out.
_JOB_REMOVED = {"type": "signal", "interface": _MANAGER, "member": "JobRemoved",
                "path": "/org/freedesktop/systemd1"}


def running(timeout: float = 5.0) -> bool:
    """Whether systemd is this host's init (``/run/systemd/system``) and its
    manager answers on the system bus within ``timeout`` seconds."""
    try:
        if not stat.S_ISDIR(os.lstat(RUN_DIR).st_mode):
            return False
    except OSError:
        return False
    try:
        with Systemd(timeout) as manager:
            manager.version()
    except BusError:
        return False
    return True


class Systemd:
    """One connection to systemd's manager on the system bus."""

    def __init__(self, timeout: float = 10.0) -> None:
        """Connect; ``timeout`` bounds the connection and is the default
        limit of calls that take no deadline."""
        self.timeout = timeout
        deadline = time.monotonic() + timeout
        try:
            self._conn: Any = open_dbus_connection(bus="SYSTEM", auth_timeout=timeout)
        except (OSError, ValueError, RuntimeError) as exc:
            raise FailedPrecondition(
                f"cannot reach systemd on the system bus ({shorten(str(exc))}): the systemd "
                "cgroup driver needs systemd as init and its D-Bus API") from exc
        # Bounded: with other clients subscribed, every job's signal reaches us.
        self._jobs: collections.deque[Any] = collections.deque(maxlen=1024)
        try:
            self._filter = self._conn.filter(MatchRule(**_JOB_REMOVED), queue=self._jobs)
            self._call(message_bus.AddMatch(
                MatchRule(sender="org.freedesktop.systemd1", **_JOB_REMOVED)), deadline,
                "subscribe to job results")
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Systemd:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start_slice(self, name: str, deadline: float, *, description: str | None = None,
                    properties: Sequence[Property] = ()) -> None:
        """Make transient slice ``name`` and wait until it is active; a slice
        that is already active is fine (the kubelet may have made it).

        The properties are those the kubelet's pod slices get (through
        runc's libcontainer, ``Apply(-1)``): the parent slice in ``Wants=``,
        no default dependencies, and accounting on for memory, CPU, I/O and
        tasks, which makes systemd enable those controllers down to the slice.
        """
        parent = slices.parent(name)
        if parent is None:
            return  # the root slice always exists
        props: list[Property] = [
            ("Description", "s", description or f"podvisor slice {name}"),
            ("Wants", "as", [parent]),
            ("DefaultDependencies", "b", False),
            ("MemoryAccounting", "b", True),
            ("CPUAccounting", "b", True),
            ("IOAccounting", "b", True),
            ("TasksAccounting", "b", True),
            *properties,
        ]
        self._start(name, props, deadline, exists_ok=True)

    def start_scope(self, name: str, slice_name: str, pids: Sequence[int], deadline: float, *,
                    description: str | None = None,
                    properties: Sequence[Property] = ()) -> None:
        """Make transient scope ``name`` in ``slice_name`` holding ``pids``
        and wait until it is active. A scope that exists already raises
        AlreadyExists, after one retry that lets a failed leftover go.

        The properties are those CRI-O gives conmon's scope: ``Slice=``,
        ``PIDs=``, ``Delegate=true`` (the processes may manage cgroups
        below), no default dependencies, and ``CollectMode=inactive-or-failed``
        so that a scope that failed is unloaded instead of lingering.
        """
        slices.expand(slice_name)
        if not name.endswith(slices.SCOPE) or "/" in name:
            raise InvalidArgument(f"invalid scope name {shorten(name)}: expected <name>.scope")
        props: list[Property] = [
            ("Description", "s", description or f"podvisor scope {name}"),
            ("Slice", "s", slice_name),
            ("PIDs", "au", list(pids)),
            ("Delegate", "b", True),
            ("DefaultDependencies", "b", False),
            ("CollectMode", "s", "inactive-or-failed"),
            *properties,
        ]
        self._start(name, props, deadline, exists_ok=False)

    def stop(self, name: str, deadline: float) -> None:
        """Stop unit ``name`` (a slice stops everything in it) and wait until
        it is gone or inactive; a unit that does not exist is fine."""
        try:
            job = self._enqueue("StopUnit", "ss", (name, "replace"), deadline, f"stop {name}")
        except DBusErrorResponse as exc:
            if exc.name == _NO_SUCH_UNIT:
                return
            raise _refused(f"stop {name}", exc) from None
        result = self._wait(job, deadline, f"stop {name}")
        self._reset_failed(name, deadline)
        state = self.state(name, deadline)
        if state not in (None, "inactive"):
            raise FailedPrecondition(
                f"systemd did not stop {shorten(name)}: its job ended {result!r}, the unit "
                f"is {state!r}")

    def active(self, name: str, deadline: float | None = None) -> bool:
        """Whether unit ``name`` is active; a unit systemd does not know is not."""
        return self.state(name, deadline) in ("active", "reloading")

    def state(self, name: str, deadline: float | None = None) -> str | None:
        """The ``ActiveState`` of unit ``name`` ("active", "inactive",
        "failed", ...), or None when systemd has no such unit loaded."""
        deadline = self._deadline(deadline)
        try:
            (path,) = self._call(new_method_call(_SYSTEMD, "GetUnit", "s", (name,)), deadline,
                                 f"look up {name}")
            unit = DBusAddress(path, bus_name=_SYSTEMD.bus_name, interface=_UNIT)
            ((_, value),) = self._call(Properties(unit).get("ActiveState"), deadline,
                                       f"read the state of {name}")
        except DBusErrorResponse as exc:
            # Unloaded between the two calls: gone all the same.
            if exc.name in (_NO_SUCH_UNIT, _UNKNOWN_OBJECT):
                return None
            raise _refused(f"read the state of {name}", exc) from None
        return str(value)

    def version(self, deadline: float | None = None) -> str:
        """systemd's version string (e.g. "252.30-1~deb12u2")."""
        try:
            ((_, value),) = self._call(Properties(_SYSTEMD).get("Version"),
                                       self._deadline(deadline), "read its version")
        except DBusErrorResponse as exc:
            raise _refused("read its version", exc) from None
        return str(value)

    def _start(self, name: str, props: list[Property], deadline: float, *,
               exists_ok: bool) -> None:
        variants = [(key, (sig, value)) for key, sig, value in props]
        body: tuple[object, ...] = (name, "replace", variants, [])
        what = f"start {name}"
        for retry in (False, True):
            try:
                job = self._enqueue("StartTransientUnit", "ssa(sv)a(sa(sv))", body, deadline,
                                    what)
                break
            except DBusErrorResponse as exc:
                if exc.name != _UNIT_EXISTS:
                    raise _refused(what, exc) from None
                if exists_ok and self.active(name, deadline):
                    return
                if retry:
                    raise AlreadyExists(f"systemd unit {shorten(name)} already exists") from None
                # A failed leftover keeps its name until reset (runc does the same).
                self._reset_failed(name, deadline)
        result = self._wait(job, deadline, what)
        if result != "done":
            self._reset_failed(name, deadline)
            raise FailedPrecondition(f"systemd could not start {shorten(name)}: its job "
                                     f"ended {result!r}")

    def _enqueue(self, method: str, signature: str, body: tuple[object, ...], deadline: float,
                 what: str) -> str:
        """Call a Manager method that enqueues a job; returns the job's path."""
        # Results of earlier jobs are of no use now, and this job has none yet.
        self._jobs.clear()
        (job,) = self._call(new_method_call(_SYSTEMD, method, signature, body), deadline, what)
        return str(job)

    def _wait(self, job: str, deadline: float, what: str) -> str:
        """Wait for ``JobRemoved`` of ``job``; returns its result."""
        while True:
            for signal in self._jobs:
                _id, path, _unit, result = signal.body
                if path == job:
                    self._jobs.remove(signal)
                    return str(result)
            try:
                self._conn.recv_messages(timeout=_left(deadline, what))
            except TimeoutError:
                raise DeadlineExceeded(f"systemd did not {what} within the deadline") from None
            except OSError as exc:
                raise Unavailable(f"lost the bus connection to systemd during {what}: "
                                  f"{exc}") from exc

    def _reset_failed(self, name: str, deadline: float) -> None:
        """Let a failed unit go; best effort, as the callers fail anyway."""
        with contextlib.suppress(DBusErrorResponse):
            self._call(new_method_call(_SYSTEMD, "ResetFailedUnit", "s", (name,)), deadline,
                       f"reset {name}")

    def _call(self, message: Message, deadline: float, what: str) -> tuple[Any, ...]:
        """Send one method call and return the body of its reply; an error
        reply raises jeepney's DBusErrorResponse for the caller to judge."""
        try:
            reply = self._conn.send_and_get_reply(message, timeout=_left(deadline, what))
        except TimeoutError:
            raise DeadlineExceeded(f"systemd did not answer ({what}) in time") from None
        except OSError as exc:
            raise Unavailable(f"lost the bus connection to systemd during {what}: "
                              f"{exc}") from exc
        return tuple(unwrap_msg(reply))

    def _deadline(self, deadline: float | None) -> float:
        return time.monotonic() + self.timeout if deadline is None else deadline


def _left(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"no time left to {what} through systemd")
    return left


def _refused(what: str, exc: DBusErrorResponse) -> FailedPrecondition:
    detail = exc.data[0] if exc.data and isinstance(exc.data[0], str) else exc.data
    return FailedPrecondition(f"systemd refused to {what}: {exc.name}: {shorten(detail)}")
