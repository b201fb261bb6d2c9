"""The pod's infra process, for pods whose containers share a PID namespace.

It is catatonit in pause mode (``/catatonit -P``), run like any container
(conmon, runtime create/start) from a read-only rootfs podvisor builds
itself: one static binary and the empty mount points, so no pause image is
pulled. A configured ``pause_image`` is honoured instead: its command runs
from its own rootfs. The rootfs is shared by every pod and built once, atomically
(temp dir + rename).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from ...proto.errors import FailedPrecondition
from ...proto.runtime_ops import InfraImage
from ..base import OpContext
from . import monitor, specs, teardown, usernsprobe
from .cgroup.driver import Driver
from .layout import Layout

CATATONIT = "/usr/bin/catatonit"


def ensure_rootfs(layout: Layout) -> str:
    rootfs = layout.infra_rootfs
    if os.path.exists(os.path.join(rootfs, "catatonit")):
        return rootfs
    if not os.access(CATATONIT, os.X_OK):
        raise FailedPrecondition(f"{CATATONIT} is missing: install Debian's catatonit "
                                 "(pods sharing a PID namespace need it)")
    os.makedirs(os.path.dirname(rootfs), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".infra-rootfs.", dir=os.path.dirname(rootfs))
    for name in ("proc", "dev", "sys", "etc"):
        os.mkdir(os.path.join(tmp, name), 0o755)
    shutil.copy2(CATATONIT, os.path.join(tmp, "catatonit"))
    os.chmod(tmp, 0o755)
    try:
        os.rename(tmp, rootfs)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another worker won the race
    return rootfs


def start(ctx: OpContext, layout: Layout, handler: monitor.Handler, cgroups: Driver,
          pod: Mapping[str, Any], image: InfraImage | None = None,
          zygote: monitor.MonitorZygote | None = None) -> dict[str, Any]:
    """Run the infra process: catatonit from the built-in rootfs, or the
    configured pause image's command from the rootfs the supervisor had the
    storage pool mount (``image``)."""
    infra_id = pod["id"]
    bundle = layout.bundle_dir(infra_id)
    os.makedirs(bundle, mode=0o700, exist_ok=True)
    node = specs.node_facts(cgroups.manager, handler.name, handler.path, handler.root)
    if image:
        rootfs, top = image.rootfs, layout.daemon_runroot
        document = specs.infra_spec(node, pod, rootfs, tuple(image.args))
    else:
        rootfs, top = ensure_rootfs(layout), layout.daemon_root
        document = specs.infra_spec(node, pod, rootfs)
    if pod.get("idmap"):
        # runc mounts the rootfs from inside the pod's user namespace.
        usernsprobe.open_up(rootfs, top)
    with open(os.path.join(bundle, "config.json"), "w", encoding="utf-8") as f:
        json.dump(document, f)
    started = monitor.spawn(handler, infra_id, bundle, layout.state_dir(infra_id),
                            layout.exits_dir, os.devnull, deadline=ctx.deadline,
                            terminal=False, stdin=False, stdin_once=False, zygote=zygote)
    cgroups.place_conmon(started.conmon_pid, infra_id, pod["cgroup_parent"], ctx.deadline)
    done = handler.run("start", infra_id, deadline=ctx.deadline)
    if done.returncode != 0:
        raise monitor.runtime_failure(f"starting the infra process of pod {infra_id}",
                                      done.stderr)
    return {"id": infra_id, "pid": started.pid, "conmon_pid": started.conmon_pid}


def stop(ctx: OpContext, layout: Layout, handler: monitor.Handler,
         pod: Mapping[str, Any]) -> None:
    infra_id = pod["id"]
    if monitor.read_exit(layout.exits_dir, infra_id) is not None:
        return
    teardown.force_kill(handler, layout, infra_id, ctx.deadline)


def remove(ctx: OpContext, layout: Layout, handler: monitor.Handler, cgroups: Driver,
           pod: Mapping[str, Any]) -> None:
    teardown.discard(handler, layout, pod["id"], ctx.deadline)
    cgroups.remove_conmon(pod["id"], str(pod.get("cgroup_parent") or ""), ctx.deadline)
