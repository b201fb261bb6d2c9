"""Pods and containers through the CRI socket: real images from the test
registry, real CNI, runc and crun, conmon's logs and exit codes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from daemonlib import poll_until
from podfixtures import Node, cgroup_exists, log_lines, node

from podvisor.proto import api_pb2 as api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def n() -> Iterator[Node]:
    with node() as here:
        yield here


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_pod_with_two_containers(n: Node, handler: str) -> None:
    pod = n.pod_config(f"two-{handler}")
    pod_id = n.run_pod(pod, handler)
    status = n.pod_status(pod_id, verbose=True)
    assert status.status.state == api.SANDBOX_READY
    assert status.status.runtime_handler == handler
    pod_ip = status.status.network.ip
    assert pod_ip.startswith(str(n.net.subnet.network_address)[:-1])

    writer = n.run(pod_id, pod, n.container_config(
        "writer", "echo to-out; echo to-err >&2; echo more-out; exit 3"))
    done = n.wait_state(writer, api.CONTAINER_EXITED)
    assert done.exit_code == 3
    assert done.reason == "Error"
    assert done.finished_at >= done.started_at > done.created_at > 0
    assert done.image_ref.startswith("sha256:")
    log = Path(pod.log_directory) / "writer.log"
    assert done.log_path == str(log)
    lines = log_lines(log)
    assert ("stdout", "F", "to-out") in lines and ("stdout", "F", "more-out") in lines
    assert ("stderr", "F", "to-err") in lines

    # Ignores SIGTERM: the stop must wait the 2 s, then SIGKILL.
    sleeper = n.run(pod_id, pod, n.container_config(
        "sleeper", "trap '' TERM; while :; do sleep 0.2; done"))
    n.wait_state(sleeper, api.CONTAINER_RUNNING)
    out = n.exec(sleeper, "ip", "-4", "-o", "addr", "show", "eth0")
    assert out.exit_code == 0 and f" {pod_ip}/" in out.stdout.decode()
    ipc = n.exec(sleeper, "readlink", "/proc/self/ns/ipc").stdout.decode().strip()
    pinned = os.stat(eval_info(status)["namespaces"]["ipc"]).st_ino
    assert ipc == f"ipc:[{pinned}]"

    started = time.monotonic()
    n.daemon.runtime.StopContainer(api.StopContainerRequest(container_id=sleeper, timeout=2),
                                   timeout=30)
    took = time.monotonic() - started
    assert 2.0 <= took < 8.0, took
    stopped = n.status(sleeper)
    assert stopped.state == api.CONTAINER_EXITED and stopped.exit_code == 137
    n.daemon.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=sleeper),
                                     timeout=30)
    listed = {c.id for c in n.daemon.runtime.ListContainers(
        api.ListContainersRequest(filter=api.ContainerFilter(pod_sandbox_id=pod_id)),
        timeout=10).containers}
    assert listed == {writer}

    n.remove_pod(pod_id)
    assert not n.daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(
        filter=api.PodSandboxFilter(id=pod_id)), timeout=10).items
    assert not cgroup_exists(pod.linux.cgroup_parent)
    assert not [m for m in n.daemon.mounts() if pod_id in m or writer in m]
    assert pod_id not in n.net.namespaces()
    assert not n.daemon.remove_leftovers()


def eval_info(status: api.PodSandboxStatusResponse) -> dict[str, object]:
    import json
    info: dict[str, object] = json.loads(status.info["info"])
    return info


def test_exec_sync(n: Node) -> None:
    pod = n.pod_config("exec")
    pod_id = n.run_pod(pod)
    try:
        box = n.run(pod_id, pod, n.container_config("box", "sleep 3600"))
        n.wait_state(box, api.CONTAINER_RUNNING)
        echo = n.exec(box, "echo", "hello")
        assert (echo.exit_code, echo.stdout, echo.stderr) == (0, b"hello\n", b"")
        failing = n.exec(box, "sh", "-c", "echo oops >&2; exit 7")
        assert (failing.exit_code, failing.stderr) == (7, b"oops\n")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            n.exec(box, "sleep", "10", timeout=1)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 5
        # A background child holding stdout must not hold the call.
        started = time.monotonic()
        background = n.exec(box, "sh", "-c", "sleep 30 & echo bg", timeout=10)
        assert (background.exit_code, background.stdout) == (0, b"bg\n")
        assert time.monotonic() - started < 5
        assert n.exec(box, "true").exit_code == 0
    finally:
        n.remove_pod(pod_id)


@dataclass(frozen=True)
class Pod:
    id: str
    config: api.PodSandboxConfig


@dataclass(frozen=True)
class EdgePod(Pod):
    first: str  # the one container the refused creates must leave alone


@pytest.fixture(scope="module")
def edges(n: Node) -> Iterator[EdgePod]:
    """A pod holding one created container, "dup", for the refused creates;
    nothing else may succeed in creating a container in it."""
    config = n.pod_config("edges")
    pod_id = n.run_pod(config)
    try:
        yield EdgePod(pod_id, config, n.create(pod_id, config,
                                                n.container_config("dup", "sleep 3600")))
    finally:
        n.remove_pod(pod_id)


@pytest.fixture
def pod(n: Node) -> Iterator[Pod]:
    """A running pod of the test's own, stopped and removed at the end."""
    config = n.pod_config("edges")
    pod_id = n.run_pod(config)
    try:
        yield Pod(pod_id, config)
    finally:
        n.remove_pod(pod_id)  # idempotent: the test may have removed it


def container_names(n: Node, pod_id: str) -> list[str]:
    return [c.metadata.name for c in n.daemon.runtime.ListContainers(api.ListContainersRequest(
        filter=api.ContainerFilter(pod_sandbox_id=pod_id)), timeout=10).containers]


def test_a_second_create_of_a_name_is_already_exists_naming_the_first(
        n: Node, edges: EdgePod) -> None:
    with pytest.raises(grpc.RpcError) as err:
        n.create(edges.id, edges.config, n.container_config("dup", "sleep 3600"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert edges.first in (err.value.details() or "")
    # Nothing half-done is left by the failure.
    assert container_names(n, edges.id) == ["dup"]


def test_a_create_from_a_missing_image_is_not_found(n: Node, edges: EdgePod) -> None:
    bad_image = n.container_config("noimg", "true")
    bad_image.image.image = "127.0.0.1:1/nope/missing:1"
    with pytest.raises(grpc.RpcError) as err:
        n.create(edges.id, edges.config, bad_image)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert container_names(n, edges.id) == ["dup"]


def test_a_relative_mount_source_is_invalid_argument(n: Node, edges: EdgePod) -> None:
    # A relative source is invalid (a missing absolute one is created as a
    # directory, as CRI-O does).
    bad_mount = n.container_config("nomount", "true", mounts=[api.Mount(
        container_path="/data", host_path="relative/source")])
    with pytest.raises(grpc.RpcError) as err:
        n.create(edges.id, edges.config, bad_mount)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "relative/source" in (err.value.details() or "")
    assert container_names(n, edges.id) == ["dup"]


def test_stopping_a_container_twice_succeeds(n: Node, pod: Pod) -> None:
    created = n.create(pod.id, pod.config, n.container_config("stop2", "sleep 3600"))
    for _ in range(2):
        n.daemon.runtime.StopContainer(
            api.StopContainerRequest(container_id=created, timeout=0), timeout=30)


def test_removing_a_container_twice_succeeds_and_then_it_is_not_found(
        n: Node, pod: Pod) -> None:
    created = n.create(pod.id, pod.config, n.container_config("remove2", "sleep 3600"))
    rt = n.daemon.runtime
    rt.StopContainer(api.StopContainerRequest(container_id=created, timeout=0), timeout=30)
    for _ in range(2):
        rt.RemoveContainer(api.RemoveContainerRequest(container_id=created), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        n.status(created)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_create_in_a_stopped_pod_is_failed_precondition(n: Node, pod: Pod) -> None:
    n.daemon.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                                    timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        n.create(pod.id, pod.config, n.container_config("late", "true"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_stopping_and_removing_a_pod_twice_succeeds(n: Node, pod: Pod) -> None:
    rt = n.daemon.runtime
    for _ in range(2):
        rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=30)
        rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=30)


def test_a_create_in_a_removed_pod_is_not_found(n: Node, pod: Pod) -> None:
    n.remove_pod(pod.id)
    with pytest.raises(grpc.RpcError) as err:
        n.create(pod.id, pod.config, n.container_config("gone", "true"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_exec_runs_as_the_container_user_in_its_cwd(n: Node, handler: str) -> None:
    # crun's exec takes neither from the container by itself (it would run
    # as root in /): podvisor hands every runtime the container's process.
    pod = n.pod_config(f"exec-user-{handler}")
    pod_id = n.run_pod(pod, handler)
    security = api.LinuxContainerSecurityContext(
        run_as_user=api.Int64Value(value=1001), no_new_privs=True)
    idle = n.run(pod_id, pod, n.container_config(
        "idle", "sleep 3600", working_dir="/tmp",
        linux=api.LinuxContainerConfig(security_context=security)))
    n.wait_state(idle, api.CONTAINER_RUNNING)
    done = n.exec(idle, "sh", "-c", "id -u; pwd; grep NoNewPrivs /proc/self/status")
    assert done.exit_code == 0, done.stderr
    assert done.stdout.decode().split("\n")[:3] == ["1001", "/tmp", "NoNewPrivs:\t1"]
    n.remove_pod(pod_id)


def test_a_pod_naming_no_handler_runs_under_crun(n: Node) -> None:
    # crun is the default handler: its --root holds the pod's containers,
    # runc's none of them.
    pod = n.pod_config("default-handler")
    pod_id = n.run_pod(pod)
    container_id = n.run(pod_id, pod, n.container_config("idle", "sleep 3600"))
    n.wait_state(container_id, api.CONTAINER_RUNNING)

    def known_to(runtime: str) -> set[str]:
        listed = subprocess.run(
            [runtime, "--root", str(n.daemon.runroot / runtime), "list", "-q"],
            capture_output=True, text=True, check=False).stdout
        return set(listed.split())

    assert {pod_id, container_id} <= known_to("crun")
    assert not {pod_id, container_id} & known_to("runc")
    n.remove_pod(pod_id)
    assert not {pod_id, container_id} & known_to("crun")


def test_an_unknown_runtime_handler_is_invalid_argument(n: Node) -> None:
    with pytest.raises(grpc.RpcError) as err:
        n.run_pod(n.pod_config("nohandler"), handler="kata")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kata" in (err.value.details() or "")


def test_a_pod_without_a_name_is_invalid_argument(n: Node) -> None:
    nameless = n.pod_config("x")
    nameless.metadata.name = ""
    with pytest.raises(grpc.RpcError) as err:
        n.run_pod(nameless)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_retry_after_the_deadline_gets_the_same_pod(n: Node) -> None:
    pod = n.pod_config("retry")
    # A deadline shorter than a pod start; a start can take under 50 ms, so
    # shorter ones are tried until one cuts the create short.
    for deadline in (0.05, 0.02, 0.01, 0.005, 0.002):
        try:
            n.remove_pod(n.run_pod(pod, timeout=deadline))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            break
    else:
        pytest.fail("every pod start beat its deadline")
    pod_id = n.run_pod(pod)
    try:
        items = n.daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(
            filter=api.PodSandboxFilter(label_selector={"app": "retry"})), timeout=10).items
        assert [i.id for i in items] == [pod_id]
        assert items[0].state == api.SANDBOX_READY
    finally:
        n.remove_pod(pod_id)


def test_reopen_container_log(n: Node) -> None:
    pod = n.pod_config("rotate")
    pod_id = n.run_pod(pod)
    try:
        ticker = n.run(pod_id, pod, n.container_config(
            "ticker", "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done"))
        log = Path(pod.log_directory) / "ticker.log"
        poll_until(lambda: log.exists() and "tick 3" in log.read_text(), 10, what="ticks")
        log.rename(log.with_suffix(".log.1"))
        n.daemon.runtime.ReopenContainerLog(
            api.ReopenContainerLogRequest(container_id=ticker), timeout=10)
        poll_until(lambda: log.exists() and len(log_lines(log)) >= 3, 10,
                   what="lines in the reopened log")
        assert all(stream == "stdout" and text.startswith("tick ")
                   for stream, _, text in log_lines(log))
    finally:
        n.remove_pod(pod_id)


def test_host_network_pod_reports_the_node_ip(n: Node) -> None:
    pod = n.pod_config("hostnet", host_network=True, share_pid=False)
    pod_id = n.run_pod(pod)
    try:
        status = n.pod_status(pod_id).status
        assert status.network.ip
        assert status.linux.namespaces.options.network == api.NODE
        # The kubelet gives containers the pod's namespace modes.
        options = api.NamespaceOption(network=api.NODE, pid=api.CONTAINER)
        box = n.run(pod_id, pod, n.container_config("hn", "sleep 3600", linux=(
            api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
                namespace_options=options)))))
        n.wait_state(box, api.CONTAINER_RUNNING)
        assert n.exec(box, "hostname").stdout.decode().strip() == os.uname().nodename
    finally:
        n.remove_pod(pod_id)


def test_container_events_stream(n: Node) -> None:
    events: list[tuple[str, int, int]] = []
    stream = n.daemon.runtime.GetContainerEvents(api.GetEventsRequest(), timeout=120)

    def collect() -> None:
        with contextlib.suppress(grpc.RpcError):
            for event in stream:
                events.append((event.container_id, event.container_event_type,
                               len(event.containers_statuses)))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    # The subscription is live once a first event arrives: a throwaway pod.
    warmup = n.pod_config("warmup")

    def subscribed() -> bool:
        warm_id = n.run_pod(warmup)
        n.remove_pod(warm_id)
        return any(cid == warm_id for cid, _, _ in events)
    poll_until(subscribed, 20, interval=0.1, what="a live event subscription")
    pod = n.pod_config("events")
    pod_id = n.run_pod(pod)
    worker = n.run(pod_id, pod, n.container_config("brief", "exit 0"))
    n.wait_state(worker, api.CONTAINER_EXITED)
    # The exit is reported on its own, before anyone removes the container.
    poll_until(lambda: (worker, api.CONTAINER_STOPPED_EVENT) in [e[:2] for e in events], 15,
               what="the exit's STOPPED event")
    n.daemon.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=worker),
                                     timeout=30)
    n.remove_pod(pod_id)
    expected = [(worker, api.CONTAINER_CREATED_EVENT), (worker, api.CONTAINER_STARTED_EVENT),
                (worker, api.CONTAINER_STOPPED_EVENT), (worker, api.CONTAINER_DELETED_EVENT)]
    expected_all = [*expected, (pod_id, api.CONTAINER_DELETED_EVENT)]
    poll_until(lambda: all(any(e[:2] == x for e in events) for x in expected_all), 15,
               what=f"the container's four events and the pod's deletion (got {events})")
    stream.cancel()
    kinds = [kind for cid, kind, _ in events if cid == worker]
    assert kinds == [x[1] for x in expected]
    sandbox_kinds = [kind for cid, kind, _ in events if cid == pod_id]
    assert sandbox_kinds == [api.CONTAINER_CREATED_EVENT, api.CONTAINER_STARTED_EVENT,
                             api.CONTAINER_STOPPED_EVENT, api.CONTAINER_DELETED_EVENT]
    # The stopped event carries the pod's container statuses.
    stopped = next(e for e in events if e[:2] == (worker, api.CONTAINER_STOPPED_EVENT))
    assert stopped[2] == 1


def test_a_configured_pause_image_runs_the_infra() -> None:
    with node(pause_image=True) as here:
        pod = here.pod_config("paused")  # shares its PID namespace: needs an infra
        pod_id = here.run_pod(pod)
        box = here.run(pod_id, pod, here.container_config("box", "sleep 3600"))
        here.wait_state(box, api.CONTAINER_RUNNING)
        # PID 1 of the pod's namespace is the pause image's command.
        first = here.exec(box, "cat", "/proc/1/cmdline").stdout.split(b"\0")
        assert first[:2] == [b"/bin/sleep", b"86400"]
        listed = here.daemon.images.ListImages(api.ListImagesRequest(), timeout=10).images
        assert any(t.endswith("test/pause:1") for i in listed for t in i.repo_tags)
        here.remove_pod(pod_id)
        assert not [m for m in here.daemon.mounts() if pod_id in m]
        assert not here.daemon.remove_leftovers()


def test_debug_container_joins_a_target_pid_namespace(n: Node) -> None:
    pod = n.pod_config("target", share_pid=False)
    pod_id = n.run_pod(pod)
    try:
        own = api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
            namespace_options=api.NamespaceOption(pid=api.CONTAINER)),
            resources=api.LinuxContainerResources(cpu_shares=512,
                                                  memory_limit_in_bytes=64 << 20))
        app = n.run(pod_id, pod, n.container_config("app", "sleep 3600", linux=own))
        n.wait_state(app, api.CONTAINER_RUNNING)
        status = n.status(app)
        assert status.resources.linux.cpu_shares == 512
        assert status.resources.linux.memory_limit_in_bytes == 64 << 20
        debug = api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
            namespace_options=api.NamespaceOption(pid=api.TARGET, target_id=app)))
        tool = n.run(pod_id, pod, n.container_config("debug", "sleep 3600", linux=debug))
        n.wait_state(tool, api.CONTAINER_RUNNING)
        # The debug container sees the target's processes: its PID 1 is sleep 3600.
        assert n.exec(tool, "cat", "/proc/1/cmdline").stdout.split(b"\0")[:2] == [
            b"sleep", b"3600"]
        answer = n.pod_status(pod_id)
        assert answer.timestamp > 0
        assert {s.id for s in answer.containers_statuses} == {app, tool}
    finally:
        n.remove_pod(pod_id)


def test_hostile_names_and_paths_are_refused(n: Node) -> None:
    rt = n.daemon.runtime
    bad_host = n.pod_config("badhost")
    bad_host.hostname = "-Fetc/passwd"
    with pytest.raises(grpc.RpcError) as err:
        n.run_pod(bad_host)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    pod = n.pod_config("paths")
    pod_id = n.run_pod(pod)
    try:
        escape = n.container_config("escape", "true")
        escape.log_path = "../../../../etc/podvisor-test-escape"
        with pytest.raises(grpc.RpcError) as err:
            n.create(pod_id, pod, escape)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not Path("/etc/podvisor-test-escape").exists()
        # Ids that were never given out are just absent: stop/remove succeed.
        for bogus in ("../../etc", "NOT-HEX", "a/b"):
            rt.StopContainer(api.StopContainerRequest(container_id=bogus), timeout=10)
            rt.RemoveContainer(api.RemoveContainerRequest(container_id=bogus), timeout=10)
            rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=bogus), timeout=10)
    finally:
        n.remove_pod(pod_id)


def test_a_container_outlives_its_killed_monitor_and_can_still_be_stopped(n: Node) -> None:
    pod = n.pod_config("orphan")
    pod_id = n.run_pod(pod)
    try:
        box = n.run(pod_id, pod, n.container_config("box", "sleep 3600"))
        n.wait_state(box, api.CONTAINER_RUNNING)
        monitor = int((n.daemon.runroot / "c" / box / "conmon.pid").read_text())
        os.kill(monitor, 9)
        poll_until(lambda: not Path(f"/proc/{monitor}/cmdline").exists()
                   or not Path(f"/proc/{monitor}/cmdline").read_bytes(), 10,
                   what="the monitor gone")
        assert n.status(box).state == api.CONTAINER_RUNNING
        n.daemon.runtime.StopContainer(api.StopContainerRequest(container_id=box, timeout=0),
                                       timeout=30)
        assert n.status(box).state == api.CONTAINER_EXITED
    finally:
        n.remove_pod(pod_id)
