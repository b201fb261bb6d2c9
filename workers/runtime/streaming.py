"""Exec, Attach and PortForward as the runtime pool sees them: validate the
request, then answer the plan the streaming server runs later.

The checks are the kubelet streaming server's (``validateExecRequest``)
plus the container's state: at least one of stdin, stdout and stderr; no
stderr with a tty (a tty merges both outputs); a running container; for
Attach, stdin only when the container was created with it, since conmon
would drop what the client typed. Nothing is started here: a URL may
never be used.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ...proto import runtime_ops as ops
from ...proto.errors import FailedPrecondition, InvalidArgument
from ...proto.stream_ops import AttachPlan, ExecPlan, PortForwardPlan, Streams
from . import configs, sandbox
from .containers import RUNNING, current, exec_command, exec_process, load, resolve_id
from .handlers import Runtimes
from .layout import Layout

# conmon's socket names in its state dir (conmon/contract.py).
ATTACH_SOCKET, CONTROL_SOCKET = "attach", "ctl"


def exec_plan(layout: Layout, runtimes: Runtimes, args: ops.StreamRequest) -> ExecPlan:
    check_streams(args.streams)
    cmd = exec_command(list(args.cmd))
    container_id, record = _running(layout, args.id)
    handler = runtimes.handlers[record["runtime_handler"]]
    process = exec_process(layout, container_id, cmd, tty=args.streams.tty)
    return ExecPlan(container_id=container_id, runtime=[handler.path, *handler.global_args()],
                    process=json.dumps(process))


def attach_plan(layout: Layout, args: ops.StreamRequest) -> AttachPlan:
    check_streams(args.streams)
    container_id, record = _running(layout, args.id)
    config = configs.container_config(record)
    if args.streams.stdin and not config.stdin:
        raise InvalidArgument(f"container {container_id} was created without stdin; "
                              "attach without stdin")
    state_dir = layout.state_dir(container_id)
    return AttachPlan(container_id=container_id,
                      attach_socket=os.path.join(state_dir, ATTACH_SOCKET),
                      control_socket=os.path.join(state_dir, CONTROL_SOCKET),
                      stdin=args.streams.stdin)


def port_forward_plan(layout: Layout, args: ops.Ref) -> PortForwardPlan:
    sandbox_id = sandbox.resolve_id(layout, args.id)
    record = sandbox.load(layout, sandbox_id)
    if record["state"] != sandbox.READY:
        raise FailedPrecondition(f"pod sandbox {sandbox_id} is not ready")
    netns = "" if record["host_network"] else record.get("netns_path") or ""
    if not record["host_network"] and not netns:
        raise FailedPrecondition(f"pod sandbox {sandbox_id} has no network namespace")
    return PortForwardPlan(sandbox_id=sandbox_id, netns=netns)


def check_streams(streams: Streams) -> None:
    if not (streams.stdin or streams.stdout or streams.stderr):
        raise InvalidArgument("one of stdin, stdout and stderr is required")
    if streams.tty and streams.stderr:
        raise InvalidArgument("tty and stderr cannot both be set: a tty carries stderr "
                              "on stdout")


def _running(layout: Layout, prefix: str) -> tuple[str, dict[str, Any]]:
    container_id = resolve_id(layout, prefix)
    record = current(layout, load(layout, container_id))
    if record["state"] != RUNNING:
        raise FailedPrecondition(f"container {container_id} is not running")
    return container_id, record
