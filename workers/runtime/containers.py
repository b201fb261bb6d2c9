"""Container ops of the runtime pool.

A container moves ``creating -> created -> running -> exited`` and is then
removed. The record holds what podvisor decided (config, image, paths,
times it set); what the container did is read from conmon's exit file, so
``running -> exited`` needs no writer: any worker computes the state from
the record plus the exit file (``current``), and a container that exited
while podvisor was down shows its exit code on the next read.

Each mutating op takes the container's flock; reads take none. The
supervisor orchestrates what belongs to other pools (image lookup, rootfs)
around these ops.

Idempotence (CRI): StopContainer and RemoveContainer of an absent container
succeed; stopping a stopped container is a no-op.

Stopping with a grace period (``stop_gracefully``) holds no thread while
it waits: the stop signal is sent under the container's lock, the wait for
the exit file runs on the worker's event loop, and only a container still
running at the end of the grace period is taken again under its lock and
killed. Meanwhile a StopContainer with a shorter timeout, or a removal,
may kill it sooner, as the CRI allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ...proto import api_pb2 as api
from ...proto import runtime_ops as ops
from ...proto.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    shorten,
)
from ...proto.naming import container_name
from ..base import OpContext
from . import (
    configs,
    ids,
    idvolumes,
    monitor,
    names,
    podns,
    sandbox,
    spec_mounts,
    specs,
    teardown,
    usernsprobe,
)
from .handlers import Runtimes
from .layout import Layout
from .spec_namespaces import check_same_userns

log = logging.getLogger(__name__)

CREATING, CREATED, RUNNING, EXITED = "creating", "created", "running", "exited"
CRI_STATES = {CREATED: api.CONTAINER_CREATED, RUNNING: api.CONTAINER_RUNNING,
              EXITED: api.CONTAINER_EXITED, CREATING: api.CONTAINER_UNKNOWN}


def load(layout: Layout, container_id: str) -> dict[str, Any]:
    return ids.load(layout.containers, container_id, "container")


def resolve_id(layout: Layout, prefix: str) -> str:
    return ids.resolve(layout.containers, prefix, "container", "container_id")


def current(layout: Layout, record: dict[str, Any]) -> dict[str, Any]:
    """The record with what conmon's exit file says folded in (not saved)."""
    if record["state"] not in (CREATED, RUNNING):
        return record
    exited = monitor.read_exit(layout.exits_dir, record["id"])
    if exited is not None:
        return _exited(record, exited)
    if not monitor.conmon_alive(layout.state_dir(record["id"])) \
            and not monitor.process_alive(record.get("pid")):
        # conmon writes the exit file and then exits: read it again, as
        # both may have happened since the read above.
        exited = monitor.read_exit(layout.exits_dir, record["id"])
        if exited is not None:
            return _exited(record, exited)
        # conmon was killed (or the node rebooted) and the container is gone
        # too: the exit is unknown. A container still alive without its
        # monitor stays running, so a stop still kills it.
        return {**record, "state": EXITED, "exit_code": 255,
                "finished_at": record.get("finished_at") or time.time_ns(),
                "reason": "Unknown",
                "message": "the container's monitor is gone; its exit code was not recorded"}
    return record


def _exited(record: dict[str, Any], exited: dict[str, Any]) -> dict[str, Any]:
    """The record with conmon's exit file folded in."""
    oom = bool(exited.get("oom_killed"))
    code = int(exited["exit_code"])
    return {**record, "state": EXITED, "exit_code": code,
            "finished_at": int(exited["exited_at_ns"]),
            "reason": "OOMKilled" if oom else ("Completed" if code == 0 else "Error")}


def reserve(layout: Layout, ctx: OpContext, args: ops.ContainerReserve) -> ops.ContainerReserved:
    """The one check that the pod is ready: a container is only created in a
    running pod (``create`` checks again, under the record's lock, that it
    has not stopped meanwhile)."""
    container_id = args.id
    ids.check_new(container_id)
    pod = sandbox.load(layout, sandbox.resolve_id(layout, args.sandbox_id))
    if pod["state"] != sandbox.READY:
        raise FailedPrecondition(f"pod sandbox {pod['id']} is not ready; containers can only "
                                 "be created in a running pod")
    config = configs.parse(api.ContainerConfig, args.config, "config")
    pod_config = configs.sandbox_config(pod)
    name = container_name(config.metadata, pod_config.metadata)
    if not config.image.image:
        raise InvalidArgument("config.image.image is required")
    for mount in config.mounts:
        if mount.image.image:
            spec_mounts.check_image_mount(mount)
    # Refused here, before the name and record exist and before the
    # supervisor mounts a rootfs for a create that could only fail.
    log_path_of(layout, container_id, config, pod_config)
    check_same_userns(config.linux.security_context.namespace_options,
                      podns.idmap_of(pod), f"container {config.metadata.name}")
    with layout.name_lock(name, "container", ctx.deadline):
        names.reserve(layout.names_dir, name, container_id, "container",
                      lambda other: layout.containers.load(other) is not None)
        if layout.containers.load(container_id) is None:
            layout.containers.save(container_id, {
                "id": container_id, "name": name, "sandbox_id": pod["id"], "state": CREATING,
                "created_at": time.time_ns(), configs.FIELD: configs.stored(args.config),
                "image": {"id": args.image.id, "repo_tags": args.image.repo_tags,
                          "repo_digests": args.image.repo_digests},
                "runtime_handler": pod["runtime_handler"],
            })
    return ops.ContainerReserved(id=container_id, name=name, sandbox_id=pod["id"],
                                 idmap=podns.idmap_of(pod))


def create(layout: Layout, runtimes: Runtimes, ctx: OpContext, args: ops.ContainerCreate) -> None:
    """Write the OCI bundle and have conmon run ``<runtime> create``."""
    container_id = args.id
    with layout.container_lock(container_id, ctx.deadline):
        record = load(layout, container_id)
        if record["state"] != CREATING:
            return
        pod = sandbox.load(layout, record["sandbox_id"])
        if pod["state"] != sandbox.READY:
            raise FailedPrecondition(f"pod sandbox {pod['id']} stopped while the container "
                                     "was being created")
        handler, node = specs.handler_facts(runtimes, record["runtime_handler"])
        bundle = layout.bundle_dir(container_id)
        os.makedirs(bundle, mode=0o700, exist_ok=True)
        config = configs.container_config(record)
        record["image_volumes"] = [{"path": v.path, "image_id": v.image_id}
                                   for v in args.image_volumes]
        document = specs.container_spec(node, pod, record, args.rootfs, args.image_config,
                                        _target_pid_ns(layout, record, config))
        userns_path = (pod.get("ns") or {}).get("user")
        if userns_path:
            # runc mounts these from inside the pod's user namespace.
            for path in [args.rootfs, *(v.path for v in args.image_volumes)]:
                usernsprobe.open_up(path, layout.daemon_runroot)
            idvolumes.attach(layout, container_id, config, document, userns_path)
        with open(os.path.join(bundle, "config.json"), "w", encoding="utf-8") as f:
            json.dump(document, f)
        log_path = log_path_of(layout, container_id, config, configs.sandbox_config(pod))
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        record.update(rootfs=args.rootfs, bundle=bundle, log_path=log_path,
                      image_config=args.image_config, user=document["process"]["user"])
        # Persist the paths before conmon runs, so a crash after this point
        # leaves a record naming everything remove() must undo.
        layout.containers.save(container_id, record)
        ctx.check()
        started = monitor.spawn(
            handler, container_id, bundle, layout.state_dir(container_id), layout.exits_dir,
            log_path, deadline=ctx.deadline, terminal=config.tty, stdin=config.stdin,
            stdin_once=config.stdin_once, zygote=runtimes.zygote)
        runtimes.cgroups.place_conmon(started.conmon_pid, container_id, pod["cgroup_parent"],
                                      ctx.deadline)
        record.update(state=CREATED, pid=started.pid, conmon_pid=started.conmon_pid)
        layout.containers.save(container_id, record)
        log.info("Container %s (%s) created, pid %d", container_id, record["name"], started.pid)


def _remove_conmon_cgroup(layout: Layout, runtimes: Runtimes, container_id: str,
                          sandbox_id: str, deadline: float) -> None:
    """Drop the container's monitor cgroup, below its pod's cgroup."""
    try:
        pod = layout.sandboxes.load(sandbox_id) or {}
    except ValueError:
        return  # unreadable: the pod's own removal takes its cgroup whole
    runtimes.cgroups.remove_conmon(container_id, str(pod.get("cgroup_parent") or ""), deadline)


def _target_pid_ns(layout: Layout, record: Mapping[str, Any],
                   config: api.ContainerConfig) -> str | None:
    """For namespace mode TARGET (kubectl debug --target, ephemeral
    containers): the PID namespace of the running container it names, which
    must be in the same pod."""
    options = config.linux.security_context.namespace_options
    if options.pid != api.TARGET:
        return None
    target_id = options.target_id
    if not target_id:
        raise InvalidArgument("namespace_options.pid is TARGET but target_id is empty")
    try:
        target = current(layout, load(layout, resolve_id(layout, target_id)))
    except NotFound:
        raise NotFound(f"target container {target_id} not found") from None
    if target["sandbox_id"] != record["sandbox_id"]:
        raise InvalidArgument(f"target container {target_id} is in another pod")
    if target["state"] != RUNNING:
        raise FailedPrecondition(f"target container {target_id} is not running")
    return f"/proc/{target['pid']}/ns/pid"


def log_path_of(layout: Layout, container_id: str, config: api.ContainerConfig,
                pod_config: api.PodSandboxConfig) -> str:
    """The kubelet's log path: the pod's log_directory joined with the container's.

    conmon writes there as root, and removal may delete it: no ".." may lead
    it out of the directory it names.
    """
    relative = config.log_path
    directory = pod_config.log_directory
    sandbox.check_log_path("config.log_path", relative)
    sandbox.check_log_path("log_directory", directory, absolute=True)
    if not relative:
        return layout.default_log(container_id)
    if os.path.isabs(relative):
        return os.path.normpath(relative)
    if not directory:
        # CRI-O's fallback: a relative path with no pod log directory goes
        # under the runtime's own log dir.
        return os.path.join(layout.logs_dir, os.path.normpath(relative))
    return os.path.join(directory, os.path.normpath(relative))


def start(layout: Layout, runtimes: Runtimes, ctx: OpContext, args: ops.Ref,
          started: Callable[[str, str], None]) -> ops.ContainerStarted:
    """Start a created container; ``started(id, sandbox_id)`` is told once it
    runs, before its record says so (the change feed holds back its exit
    until then: workers/runtime/ops.py)."""
    container_id = resolve_id(layout, args.id)
    with layout.container_lock(container_id, ctx.deadline):
        record = current(layout, load(layout, container_id))
        if record["state"] == RUNNING:
            return ops.ContainerStarted(id=container_id)
        if record["state"] != CREATED:
            raise FailedPrecondition(f"container {container_id} is {record['state']}; only a "
                                     "created container can be started")
        handler = runtimes.handlers[record["runtime_handler"]]
        # Taken before the start: a quick container can exit (and conmon stamp
        # its exit) before `runtime start` returns.
        started_at = time.time_ns()
        done = handler.run("start", container_id, deadline=ctx.deadline)
        if done.returncode != 0:
            raise monitor.runtime_failure(f"starting container {container_id}", done.stderr)
        started(container_id, record["sandbox_id"])
        record.update(state=RUNNING, started_at=started_at)
        layout.containers.save(container_id, record)
        log.info("Container %s started", container_id)
        return ops.ContainerStarted(id=container_id)


def stop(layout: Layout, runtimes: Runtimes, ctx: OpContext,
         args: ops.ContainerStop) -> ops.ContainerStopped:
    """Stop signal, then SIGKILL at the timeout (0: at once)."""
    try:
        container_id = resolve_id(layout, args.id)
    except NotFound:
        return ops.ContainerStopped(found=False)
    with layout.container_lock(container_id, ctx.deadline):
        record = current(layout, load(layout, container_id))
        running = _running(layout, record)
        if running:
            _kill_and_wait(ctx, layout, runtimes.handlers[record["runtime_handler"]], record,
                           float(args.timeout))
        return ops.ContainerStopped(found=True, id=container_id,
                                    sandbox_id=record["sandbox_id"], stopped=running)


async def stop_gracefully(layout: Layout, runtimes: Runtimes, ctx: OpContext,
                          args: ops.ContainerStop) -> ops.ContainerStopped:
    """``stop``, with the grace period waited out on the event loop."""
    stopped, waiting = await asyncio.to_thread(_signal_stop, layout, runtimes, ctx, args)
    if waiting:
        until = min(ctx.deadline, time.monotonic() + args.timeout)
        if not await monitor.wait_exit_async(layout.exits_dir, stopped.id, until,
                                             ctx.cancelled):
            if ctx.cancelled.is_set():
                ctx.check()  # the caller is gone: it raises
            await asyncio.to_thread(_finish_stop, layout, runtimes, ctx, stopped.id)
    return stopped


def _signal_stop(layout: Layout, runtimes: Runtimes, ctx: OpContext,
                 args: ops.ContainerStop) -> tuple[ops.ContainerStopped, bool]:
    """Send the stop signal (or, with no grace period, kill now); whether
    the caller is to wait for the exit."""
    if args.timeout <= 0:
        return stop(layout, runtimes, ctx, args), False
    try:
        container_id = resolve_id(layout, args.id)
    except NotFound:
        return ops.ContainerStopped(found=False), False
    with layout.container_lock(container_id, ctx.deadline):
        record = current(layout, load(layout, container_id))
        running = _running(layout, record)
        if running:
            handler = runtimes.handlers[record["runtime_handler"]]
            sig = stop_signal(record, configs.container_config(record))
            log.info("Stopping container %s with %s, %ds before SIGKILL", container_id,
                     sig.name, args.timeout)
            handler.run("kill", container_id, str(int(sig)), deadline=ctx.deadline)
        return ops.ContainerStopped(found=True, id=container_id,
                                    sandbox_id=record["sandbox_id"], stopped=running), running


def _finish_stop(layout: Layout, runtimes: Runtimes, ctx: OpContext, container_id: str) -> None:
    """The grace period is over: kill the container if it still runs."""
    try:
        with layout.container_lock(container_id, ctx.deadline):
            record = current(layout, load(layout, container_id))
            if _running(layout, record):
                _kill_and_wait(ctx, layout, runtimes.handlers[record["runtime_handler"]],
                               record, 0)
    except NotFound:
        return  # removed meanwhile: nothing left to stop


def _running(layout: Layout, record: Mapping[str, Any]) -> bool:
    return record["state"] in (RUNNING, CREATED) or (monitor.process_alive(
        record.get("pid")) and not monitor.read_exit(layout.exits_dir, record["id"]))


def _kill_and_wait(ctx: OpContext, layout: Layout, handler: monitor.Handler,
                   record: dict[str, Any], timeout: float) -> None:
    container_id = record["id"]
    if timeout > 0:
        sig = stop_signal(record, configs.container_config(record))
        log.info("Stopping container %s with %s, %.0fs before SIGKILL", container_id,
                 sig.name, timeout)
        handler.run("kill", container_id, str(int(sig)), deadline=ctx.deadline)
        if monitor.wait_exit(layout.exits_dir, container_id,
                             min(ctx.deadline, time.monotonic() + timeout)):
            return
    if not teardown.force_kill(handler, layout, container_id, ctx.deadline) \
            and monitor.conmon_alive(layout.state_dir(container_id)):
        if time.monotonic() >= ctx.deadline:
            raise DeadlineExceeded(f"container {container_id} had not exited after SIGKILL "
                                   "by the deadline")
        raise Internal(f"container {container_id} did not exit after SIGKILL")


def stop_signal(record: Mapping[str, Any], config: api.ContainerConfig) -> signal.Signals:
    """CRI stop_signal, else the image's StopSignal, else SIGTERM."""
    named = config.stop_signal
    if named != api.SIGNAL_RUNTIME_DEFAULT:
        with contextlib.suppress(KeyError):
            return signal.Signals[api.Signal.Name(named).removeprefix("SIGNAL_")]
    image = record.get("image_config", {}).get("config", {}).get("StopSignal", "")
    if image:
        with contextlib.suppress(KeyError, ValueError):
            return (signal.Signals(int(image)) if image.isdigit()
                    else signal.Signals[image if image.startswith("SIG") else f"SIG{image}"])
    return signal.SIGTERM


def remove(layout: Layout, runtimes: Runtimes, ctx: OpContext,
           args: ops.Ref) -> ops.ContainerRemoved:
    """Kill if running, delete from the runtime, drop every file and the name."""
    try:
        container_id = resolve_id(layout, args.id)
    except NotFound:
        return ops.ContainerRemoved(found=False)
    with layout.container_lock(container_id, ctx.deadline) as held:
        record = current(layout, load(layout, container_id))
        handler = runtimes.handlers[record["runtime_handler"]]
        if record["state"] in (RUNNING, CREATED) or monitor.process_alive(record.get("pid")):
            _kill_and_wait(ctx, layout, handler, record, 0)
        teardown.discard(handler, layout, container_id, ctx.deadline)
        _remove_conmon_cgroup(layout, runtimes, container_id, record["sandbox_id"], ctx.deadline)
        # A log under the kubelet's pod log dir is the kubelet's; one podvisor
        # placed itself goes with the container.
        if record.get("log_path", "").startswith(layout.logs_dir + "/"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(record["log_path"])
        layout.containers.delete(container_id)
        with layout.name_lock(record["name"], "container", ctx.deadline):
            names.release(layout.names_dir, record["name"], container_id)
        log.info("Container %s removed", container_id)
        held.release(unlink=True)  # the lock file goes with its container
        return ops.ContainerRemoved(found=True, id=container_id,
                                    sandbox_id=record["sandbox_id"])


def status(layout: Layout, ctx: OpContext, args: ops.StatusQuery) -> ops.ContainerStatus:
    record = current(layout, load(layout, resolve_id(layout, args.id)))
    info = {}
    if args.verbose:
        info["info"] = json.dumps({
            "pid": record.get("pid"), "conmon_pid": record.get("conmon_pid"),
            "sandbox_id": record["sandbox_id"], "bundle": record.get("bundle"),
            "rootfs": record.get("rootfs"), "runtime_handler": record["runtime_handler"]})
    return ops.ContainerStatus(status=cri_status(record).SerializeToString(), info=info)


def pod_statuses(layout: Layout, sandbox_id: str) -> list[bytes]:
    """The CRI ContainerStatus of each container of the pod but those being
    created, serialized."""
    out = []
    for container_id in ids.members(layout.containers, sandbox_id):
        with contextlib.suppress(NotFound):  # removed meanwhile
            record = current(layout, load(layout, container_id))
            if record["state"] != CREATING:
                out.append(cri_status(record).SerializeToString())
    return out


def cri_status(record: Mapping[str, Any]) -> api.ContainerStatus:
    """The record (with its exit folded in: ``current``) as the CRI's
    ContainerStatus."""
    config = configs.container_config(record)
    image = record.get("image", {})
    user = record.get("user") or {}
    # Not every signal has a CRI name (the real-time ones have none).
    cri_signal = "SIGNAL_" + stop_signal(record, config).name
    if cri_signal not in api.Signal.DESCRIPTOR.values_by_name:
        cri_signal = "SIGNAL_RUNTIME_DEFAULT"
    status = api.ContainerStatus(
        id=record["id"], metadata=config.metadata, state=CRI_STATES[record["state"]],
        created_at=record["created_at"], started_at=record.get("started_at", 0),
        finished_at=record.get("finished_at", 0), exit_code=record.get("exit_code", 0),
        image=api.ImageSpec(image=config.image.image, user_specified_image=config.image.image),
        image_ref=image.get("id", ""), image_id=image.get("id", ""),
        reason=record.get("reason", ""), message=record.get("message", ""),
        labels=config.labels, annotations=config.annotations,
        mounts=_status_mounts(config, record.get("image_volumes") or []),
        log_path=record.get("log_path", ""),
        stop_signal=cri_signal)
    # What the container was given; the kubelet compares it during in-place
    # resize.
    if config.linux.HasField("resources"):
        status.resources.linux.CopyFrom(config.linux.resources)
    if user:
        status.user.linux.CopyFrom(api.LinuxContainerUser(
            uid=user.get("uid", 0), gid=user.get("gid", 0),
            supplemental_groups=user.get("additionalGids", [])))
    return status


def _status_mounts(config: api.ContainerConfig,
                   volumes: list[dict[str, str]]) -> list[api.Mount]:
    """The config's mounts, each image mount with the id of the image it
    got (the CRI's Mount.image.image_ref)."""
    mounts = [api.Mount.FromString(m.SerializeToString()) for m in config.mounts]
    images = iter(volumes)
    for mount in mounts:
        if mount.image.image:
            volume = next(images, None)
            if volume is not None:
                mount.image.image_ref = volume["image_id"]
    return mounts


def selected(layout: Layout, *, id_prefix: str = "", pod_prefix: str = "",
             sandbox_id: str = "", labels: Mapping[str, str] | None = None,
             creating: bool = False) -> Iterator[tuple[dict[str, Any], api.ContainerConfig]]:
    """The containers a CRI filter selects: each record with its exit
    folded in (``current``) and its config, parsed once. Ids and pod ids
    match by prefix, as the kubelet may send them, ``sandbox_id`` exactly;
    the ones still being created only with ``creating``."""
    for container_id in layout.containers.ids():
        if id_prefix and not container_id.startswith(id_prefix):
            continue
        raw = layout.containers.load(container_id)
        if raw is None or (raw["state"] == CREATING and not creating):
            continue
        if (sandbox_id and raw["sandbox_id"] != sandbox_id) \
                or (pod_prefix and not raw["sandbox_id"].startswith(pod_prefix)):
            continue
        config = configs.container_config(raw)
        if labels and not configs.labels_match(config.labels, labels):
            continue
        yield current(layout, raw), config


def list_containers(layout: Layout, ctx: OpContext,
                    args: ops.ContainerListQuery) -> ops.ContainerList:
    flt = configs.parse(api.ContainerFilter, args.filter, "filter")
    items = []
    # Creating ones are not the kubelet's to see; "all" is for removal.
    for record, config in selected(layout, id_prefix=flt.id, pod_prefix=flt.pod_sandbox_id,
                                   sandbox_id=args.sandbox_id, labels=flt.label_selector,
                                   creating=args.all):
        if flt.HasField("state") and CRI_STATES[record["state"]] != flt.state.state:
            continue
        image_id = record.get("image", {}).get("id", "")
        items.append(api.Container(
            id=record["id"], pod_sandbox_id=record["sandbox_id"], metadata=config.metadata,
            image=api.ImageSpec(image=config.image.image), image_ref=image_id,
            image_id=image_id, state=CRI_STATES[record["state"]],
            created_at=record["created_at"], labels=config.labels,
            annotations=config.annotations).SerializeToString())
    return ops.ContainerList(items=items)


def exec_sync(layout: Layout, runtimes: Runtimes, ctx: OpContext,
              args: ops.ExecSync) -> ops.ExecResult:
    container_id = resolve_id(layout, args.id)
    cmd = exec_command(args.cmd)
    timeout = float(args.timeout)
    if timeout < 0:
        raise InvalidArgument(f"timeout {timeout:g} is negative; 0 means no timeout")
    record = current(layout, load(layout, container_id))
    if record["state"] != RUNNING:
        raise FailedPrecondition(f"container {container_id} is not running")
    handler = runtimes.handlers[record["runtime_handler"]]
    process = exec_process(layout, container_id, cmd)
    ctx.check()
    result = monitor.exec_sync(handler, container_id, process, timeout, ctx.deadline,
                               layout.bundle_dir(container_id))
    if result["deadline_hit"]:
        raise DeadlineExceeded(f"command {shorten(cmd[0])} was still running at the call's "
                               "deadline and was killed")
    if result["timed_out"]:
        # The kubelet reads DEADLINE_EXCEEDED from ExecSync as "the probe
        # timed out" (remote_runtime.go); an exit code would read as a failure.
        raise DeadlineExceeded(f"command {shorten(cmd[0])} timed out after {timeout:g}s")
    if result["runtime_error"] and result["exit_code"] < 0:
        raise Internal(f"exec in container {container_id}: {result['runtime_error']}")
    return ops.ExecResult(stdout=result["stdout"], stderr=result["stderr"],
                          exit_code=result["exit_code"])


# Linux: the longest single argument execve(2) takes (32 pages).
MAX_ARG_STRLEN = 32 * 4096


def exec_command(cmd: list[str]) -> list[str]:
    """ExecSync's ``cmd``, refused when no process could be started with it:
    execve(2) takes neither an empty program nor a NUL inside an argument,
    nor one argument of MAX_ARG_STRLEN or more, nor arguments past ARG_MAX
    (half of it here: the container's environment counts too)."""
    if not cmd:
        raise InvalidArgument("cmd is required: it names the command to run and its arguments")
    if not cmd[0]:
        raise InvalidArgument("cmd[0] is empty: it names the command to run")
    for index, arg in enumerate(cmd):
        if "\0" in arg:
            raise InvalidArgument(f"cmd[{index}] {shorten(arg)} contains a NUL byte")
    sizes = [len(arg.encode(errors="surrogateescape")) + 1 for arg in cmd]
    if max(sizes) > MAX_ARG_STRLEN or sum(sizes) > os.sysconf("SC_ARG_MAX") // 2:
        raise InvalidArgument(f"cmd is too long to execute ({sum(map(len, cmd))} characters "
                              f"in {len(cmd)} arguments)")
    return cmd


def exec_process(layout: Layout, container_id: str, cmd: list[str],
                 tty: bool = False) -> dict[str, Any]:
    """The OCI process an exec in the container runs: the container's own
    (user, groups, cwd, env, capabilities, no_new_privileges, rlimits,
    AppArmor and SELinux labels) with ``cmd`` as its args, as CRI-O's
    exec does. Handed to the runtime as ``exec --process``: without it crun
    1.8 runs the command as root in /, with no_new_privileges off, where
    runc copies the container's process."""
    path = os.path.join(layout.bundle_dir(container_id), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            process = dict(json.load(f)["process"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FailedPrecondition(f"container {container_id} has no readable process "
                                 f"spec: {shorten(str(exc))}") from None
    process["args"] = list(cmd)
    process["terminal"] = tty
    process.pop("consoleSize", None)
    return process


def reopen_log(layout: Layout, ctx: OpContext, args: ops.Ref) -> None:
    container_id = resolve_id(layout, args.id)
    record = current(layout, load(layout, container_id))
    if record["state"] != RUNNING:
        raise FailedPrecondition(f"container {container_id} is not running")
    monitor.ctl(layout.state_dir(container_id), "reopen", ctx.deadline)


def stop_pod_containers(layout: Layout, runtimes: Runtimes, ctx: OpContext,
                        args: ops.Ref) -> ops.Found:
    """Forcibly stop every container of a pod (CRI StopPodSandbox)."""
    try:
        sandbox_id = sandbox.resolve_id(layout, args.id)
    except NotFound:
        return ops.Found(found=False)
    for container_id in ids.members(layout.containers, sandbox_id):
        stop(layout, runtimes, ctx, ops.ContainerStop(id=container_id, timeout=0))
    return ops.Found(found=True, id=sandbox_id)
