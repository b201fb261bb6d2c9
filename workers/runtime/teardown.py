"""Ending and deleting what conmon runs, for containers and infra alike.

Both follow one order: SIGKILL through the runtime and wait for conmon's
exit file (bounded), then delete the runtime state, stop a monitor that is
somehow still there, and drop the bundle, state dir and exit file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time

from ...proto.errors import Internal
from . import monitor
from .layout import Layout

# After SIGKILL a process dies at once unless stuck in the kernel; this
# bounds how long a stop waits for conmon to record that.
KILL_WAIT = 10.0


def force_kill(handler: monitor.Handler, layout: Layout, object_id: str,
               deadline: float) -> bool:
    """SIGKILL every process of ``object_id``; True once its exit is recorded."""
    handler.run("kill", "--all", object_id, "KILL")
    until = min(deadline, time.monotonic() + KILL_WAIT)
    return monitor.wait_exit(layout.exits_dir, object_id, until) is not None


def discard(handler: monitor.Handler, layout: Layout, object_id: str) -> None:
    """Delete the runtime state and every file of a stopped ``object_id``."""
    done = handler.run("delete", "--force", object_id)
    if done.returncode != 0 and "not exist" not in done.stderr:
        raise Internal(f"deleting {object_id} from {handler.name}: "
                       f"{done.stderr.strip()[:500]}")
    monitor.kill_monitor(layout.state_dir(object_id))
    for path in (layout.bundle_dir(object_id), layout.state_dir(object_id)):
        shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(layout.exits_dir, object_id))
