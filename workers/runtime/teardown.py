"""Ending and deleting what conmon runs, for containers and infra alike.

Both follow one order: SIGKILL through the runtime and wait until no
process of the object is left (bounded), then delete the runtime state,
stop a monitor that is somehow still there, and drop the bundle, state dir
and exit file.

The wait is bounded by what is there, so a cleanup never waits for a
process that never started: while a monitor runs, until conmon's exit
file; with no monitor, while the runtime still reports the container;
with neither (a create whose worker was killed before its monitor ran),
not at all. A monitor is found by its command line, not only by its pid
file: conmon writes that file once the container is created, and a
monitor still creating must be waited for, or its container would appear
after the cleanup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

from ...proto.errors import Internal
from . import idvolumes, monitor
from .layout import Layout

# After SIGKILL a process dies at once unless stuck in the kernel; this
# bounds how long a stop waits for that to show.
KILL_WAIT = 10.0
# A monitor whose worker was killed may create its container after the
# first kill: the kill is sent again this often while the wait lasts.
KILL_REPEAT = 0.25


def force_kill(handler: monitor.Handler, layout: Layout, object_id: str,
               deadline: float) -> bool:
    """SIGKILL every process of ``object_id``; True once none is left."""
    until = min(deadline, time.monotonic() + KILL_WAIT)
    next_kill = 0.0
    delay = 0.005
    while True:
        if monitor.read_exit(layout.exits_dir, object_id) is not None:
            return True
        now = time.monotonic()
        if now >= next_kill:
            # The init by the pid runc recorded, then every process runc
            # finds in the container's cgroup: with the systemd driver on v1
            # the devices hierarchy runc looks in may not hold the init.
            handler.run("kill", object_id, "KILL", deadline=deadline)
            handler.run("kill", "--all", object_id, "KILL", deadline=deadline)
            next_kill = now + KILL_REPEAT
        if not _monitor_running(layout, object_id) \
                and not _runtime_has(handler, object_id, deadline):
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _monitor_running(layout: Layout, object_id: str) -> bool:
    """Is a podvisor-conmon monitor of ``object_id`` alive, created container or not?"""
    if monitor.conmon_alive(layout.state_dir(object_id)):
        return True
    return any(monitor.is_monitor(int(entry.name), object_id) for entry in os.scandir("/proc")
               if entry.name.isdigit())


def _runtime_has(handler: monitor.Handler, object_id: str, deadline: float) -> bool:
    """Does the runtime still report a live process for ``object_id``?"""
    done = handler.run("state", object_id, deadline=deadline)
    if done.returncode != 0:
        return False  # no such container (never created, or deleted)
    try:
        state = json.loads(done.stdout)
    except ValueError:
        return False
    return isinstance(state, dict) and state.get("status") != "stopped"


def discard(handler: monitor.Handler, layout: Layout, object_id: str,
            deadline: float) -> None:
    """Delete the runtime state and every file of a stopped ``object_id``."""
    done = handler.run("delete", "--force", object_id, deadline=deadline)
    if done.returncode != 0 and "not exist" not in done.stderr:
        raise Internal(f"deleting {object_id} from {handler.name}: "
                       f"{done.stderr.strip()[:500]}")
    monitor.kill_monitor(layout.state_dir(object_id))
    idvolumes.release(layout, object_id)
    for path in (layout.bundle_dir(object_id), layout.state_dir(object_id)):
        shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(layout.exits_dir, object_id))
