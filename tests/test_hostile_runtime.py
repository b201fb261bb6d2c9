"""Hostile values the runtime pool must refuse with a clear status (issue 9).

Each value goes through the CRI socket to real runc (and crun where the
runtimes word their errors differently) and must come back with its exact
code and a message under 1 KB that says what is wrong, leaving nothing
behind: no container listed or recorded, no runtime state, monitor,
bundle, rootfs or mount, and the pod still runs a container afterwards.

The deadline tests at the end drive the runtime pool's own waits (a
monitor's start, a runtime command, the control socket) past their
deadline in-process, where a slow node can be stood in for: each must end
as DEADLINE_EXCEEDED, never INTERNAL, and leave nothing running.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle import Container, Runtime, runtime_or_skip, short_tmpdir
from daemonlib import poll_until
from podfixtures import Node, log_lines, node

from podvisor.conmon import monitor as conmon_monitor
from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import DeadlineExceeded, InvalidArgument
from podvisor.workers.runtime import monitor, spec_context, spec_resources, specs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MESSAGE_MAX = 1024
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def n() -> Iterator[Node]:
    with node() as here:
        yield here


Pod = tuple[str, api.PodSandboxConfig]


@pytest.fixture(scope="module")
def pods(n: Node) -> Iterator[dict[str, Pod]]:
    """One ready pod per runtime handler."""
    made: dict[str, Pod] = {}
    try:
        for handler in ("runc", "crun"):
            config = n.pod_config(f"hostile-{handler}")
            made[handler] = (n.run_pod(config, handler), config)
        yield made
    finally:
        for pod_id, _ in made.values():
            n.remove_pod(pod_id)


@pytest.fixture(scope="module")
def box(n: Node, pods: dict[str, Pod]) -> str:
    """A running container to exec in (removed with its pod)."""
    pod_id, config = pods["runc"]
    container_id = n.run(pod_id, config, n.container_config("box", "sleep 3600"))
    n.wait_state(container_id, api.CONTAINER_RUNNING)
    return container_id


# --- what every refusal must satisfy ------------------------------------------

def refused(call: Callable[[], object], code: grpc.StatusCode, *words: str) -> str:
    """Run ``call``; it must fail with ``code`` and a short message holding
    ``words``. Returns the message."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err: Any = caught.value
    message = str(err.details() or "")
    assert err.code() == code, f"{err.code().name}: {message[:300]}"
    assert len(message.encode()) < MESSAGE_MAX, len(message.encode())
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    return message


def entries(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


def monitor_pids(marker: str) -> set[int]:
    """pids of the podvisor-conmon monitors whose state dir path holds
    ``marker``: a monitor's stderr is its conmon.log there (a title
    replaces its command line, so that cannot tell)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() == "podvisor-conmon" \
                    and marker in os.readlink(proc / "fd" / "2"):
                found.add(int(proc.name))
        except OSError:
            continue
    return found


def runtime_list(n: Node, name: str) -> set[str]:
    root = n.daemon.runroot / name
    if not root.is_dir():
        return set()
    out = subprocess.run([name, "--root", str(root), "list", "-q"], capture_output=True,
                         text=True, check=False, timeout=30)
    return set(out.stdout.split())


def leftovers(n: Node) -> dict[str, set[str]]:
    """Everything a create or a pod start could leave, by kind."""
    root, run = n.daemon.base / "root", n.daemon.runroot
    rt = n.daemon.runtime
    return {
        "containers listed": {c.id for c in rt.ListContainers(
            api.ListContainersRequest(), timeout=10).containers},
        "pods listed": {p.id for p in rt.ListPodSandbox(
            api.ListPodSandboxRequest(), timeout=10).items},
        "container records": entries(root / "runtime" / "containers"),
        "sandbox records": entries(root / "runtime" / "sandboxes"),
        "names": entries(root / "runtime" / "names"),
        "runc": runtime_list(n, "runc"),
        "crun": runtime_list(n, "crun"),
        "monitors": {str(pid) for pid in monitor_pids(f"{run}/")},
        "state dirs": entries(run / "c"),
        "bundles": entries(run / "runtime" / "bundles"),
        "pod dirs": entries(run / "runtime" / "pods"),
        "rootfs": entries(root / "storage" / "containers"),
        "netns": entries(run / "netns"),
        "mounts": set(n.daemon.mounts()),
    }


def assert_nothing_left(n: Node, before: dict[str, set[str]],
                        snapshot: Callable[[Node], dict[str, set[str]]] | None = None) -> None:
    """``snapshot`` (``leftovers``) back to ``before``; it polls, as a
    monitor exits a moment after it reports a failed create."""
    diff: dict[str, set[str]] = {}

    def settled() -> bool:
        now = (snapshot or leftovers)(n)
        diff.clear()
        diff.update({kind: now[kind] ^ before[kind] for kind in now
                     if now[kind] != before[kind]})
        return not diff

    try:
        poll_until(settled, 15, what="nothing left behind")
    except AssertionError:
        raise AssertionError(f"left behind: {diff}") from None


def assert_pod_usable(n: Node, pod: Pod) -> None:
    pod_id, config = pod
    name = f"ok-{uuid.uuid4().hex[:8]}"
    container_id = n.run(pod_id, config, n.container_config(name, "exit 0"))
    try:
        assert n.wait_state(container_id, api.CONTAINER_EXITED).exit_code == 0
    finally:
        n.daemon.runtime.RemoveContainer(
            api.RemoveContainerRequest(container_id=container_id), timeout=30)


def with_resources(n: Node, **resources: Any) -> api.ContainerConfig:
    config = n.container_config("res", "exit 0")
    config.linux.resources.CopyFrom(api.LinuxContainerResources(**resources))
    return config


# --- CreateContainer: cgroup values runc would write unchecked ------------------

def hugepages(size: str) -> dict[str, Any]:
    return {"hugepage_limits": [api.HugepageLimit(page_size=size, limit=2 ** 21)]}


BAD_RESOURCES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "cpuset_cpus path": ({"cpuset_cpus": "../../etc"}, ("cpuset_cpus", "../../etc")),
    "cpuset_cpus open range": ({"cpuset_cpus": "0-"}, ("cpuset_cpus", "N <= M")),
    "cpuset_cpus backwards": ({"cpuset_cpus": "1-0"}, ("cpuset_cpus", "N <= M")),
    "cpuset_cpus trailing comma": ({"cpuset_cpus": "0,"}, ("cpuset_cpus",)),
    "cpuset_cpus offline": ({"cpuset_cpus": "4000"}, ("cpuset_cpus 4000", "online")),
    "cpuset_mems open range": ({"cpuset_mems": "0-"}, ("cpuset_mems", "N <= M")),
    "cpuset_mems offline": ({"cpuset_mems": "0-63"}, ("cpuset_mems 0-63", "online")),
    "hugepage empty size": (hugepages(""), ("page_size is empty",)),
    "hugepage unknown size": (hugepages("3MB"), ("3MB", "not a huge page size of this node")),
    "hugepage malformed size": (hugepages("2 MB\n"), ("page_size", "not a huge page size")),
    "cpu_shares 1": ({"cpu_shares": 1}, ("cpu_shares 1", "2..262144")),
    "cpu_shares over the kernel's": ({"cpu_shares": 262145}, ("cpu_shares 262145",)),
    "cpu_period under 1 ms": ({"cpu_period": 999}, ("cpu_period 999", "1000..1000000")),
    "cpu_period over 1 s": ({"cpu_period": 1_000_001}, ("cpu_period 1000001",)),
    "cpu_quota under 1 ms": ({"cpu_quota": 999, "cpu_period": 100_000}, ("cpu_quota 999",)),
    "cpu_quota over the kernel's": ({"cpu_quota": 1 << 44, "cpu_period": 100_000},
                                    ("cpu_quota", "outside")),
    "swap limit below -1": ({"memory_limit_in_bytes": 1 << 30,
                             "memory_swap_limit_in_bytes": -2},
                            ("memory_swap_limit_in_bytes -2", "-1 means no limit")),
}


@pytest.mark.parametrize("case", list(BAD_RESOURCES))
def test_bad_cgroup_values_are_refused_before_the_runtime(
        n: Node, pods: dict[str, Pod], case: str) -> None:
    if "hugepage" in case and not Path("/sys/fs/cgroup/hugetlb").is_dir():
        pytest.skip("no hugetlb controller: hugepage limits are dropped, as CRI-O does")
    resources, words = BAD_RESOURCES[case]
    pod_id, pod = pods["runc"]
    before = leftovers(n)
    refused(lambda: n.create(pod_id, pod, with_resources(n, **resources)), INVALID, *words)
    assert_nothing_left(n, before)
    assert_pod_usable(n, pods["runc"])


def test_cgroup_values_at_the_kernels_limits_are_accepted(
        n: Node, pods: dict[str, Pod]) -> None:
    pod_id, pod = pods["runc"]
    online = Path("/sys/devices/system/cpu/online").read_text().strip()
    extra = hugepages("2MB") if Path("/sys/kernel/mm/hugepages/hugepages-2048kB").is_dir() \
        and Path("/sys/fs/cgroup/hugetlb").is_dir() else {}
    for shares, period, quota in ((2, 1000, 1000), (262144, 1_000_000, (1 << 44) - 1)):
        config = with_resources(n, cpu_shares=shares, cpu_period=period, cpu_quota=quota,
                                cpuset_cpus=online, cpuset_mems="0",
                                memory_limit_in_bytes=1 << 30,
                                memory_swap_limit_in_bytes=-1, **extra)
        config.metadata.name = f"limits-{shares}"
        container_id = n.run(pod_id, pod, config)
        try:
            done = n.wait_state(container_id, api.CONTAINER_EXITED)
            assert (done.exit_code, done.reason) == (0, "Completed"), done
        finally:
            n.daemon.runtime.RemoveContainer(
                api.RemoveContainerRequest(container_id=container_id), timeout=30)


# --- CreateContainer: a process the image cannot run ----------------------------

LONG_COMMAND = "/" + "c" * 10_000

CANNOT_RUN: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "missing command": ({"command": ["/nonexistent"]}, ("/nonexistent",)),
    "command is a directory": ({"command": ["/bin"]}, ('"/bin"', "open executable")),
    "command not on PATH": ({"command": ["nosuchcmd"]}, ("nosuchcmd",)),
    "command of 10 KB": ({"command": [LONG_COMMAND]}, ("file name too long",)),
    "working dir is a file": ({"command": ["/bin/sh", "-c", "true"],
                               "working_dir": "/bin/busybox"}, ("/bin/busybox",)),
}


@pytest.mark.parametrize("handler", ["runc", "crun"])
@pytest.mark.parametrize("case", list(CANNOT_RUN))
def test_a_process_that_cannot_run_is_failed_precondition_with_the_runtimes_reason(
        n: Node, pods: dict[str, Pod], case: str, handler: str) -> None:
    fields, words = CANNOT_RUN[case]
    pod_id, pod = pods[handler]
    config = n.container_config("cannot-run", "true")
    del config.command[:]
    config.command.extend(fields["command"])
    config.working_dir = fields.get("working_dir", "")
    before = leftovers(n)
    message = refused(lambda: n.create(pod_id, pod, config), PRECONDITION,
                      f"{handler} create failed")
    # The runtime's reason names the offending value (whichever quoting the
    # runtime uses), cut so that the reason after it survives.
    assert any(word.lower() in message.lower() for word in words), message
    assert_nothing_left(n, before)
    assert_pod_usable(n, pods[handler])


BAD_PROCESS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "NUL in the command": ({"command": ["/bin/s\x00h"]}, ("argument 0", "NUL")),
    "NUL in an argument": ({"command": ["/bin/sh", "-c", "echo a\x00b"]},
                           ("argument 2", "NUL")),
    "NUL in the working dir": ({"command": ["/bin/sh", "-c", "true"],
                                "working_dir": "/tm\x00p"}, ("working_dir", "NUL")),
}


@pytest.mark.parametrize("case", list(BAD_PROCESS))
def test_a_process_no_execve_could_start_is_invalid_argument(
        n: Node, pods: dict[str, Pod], case: str) -> None:
    fields, words = BAD_PROCESS[case]
    pod_id, pod = pods["runc"]
    config = n.container_config("nul", "true")
    del config.command[:]
    config.command.extend(fields["command"])
    config.working_dir = fields.get("working_dir", "")
    before = leftovers(n)
    refused(lambda: n.create(pod_id, pod, config), INVALID, *words)
    assert_nothing_left(n, before)


# --- CreateContainer: a log path refused before anything is made ----------------

def test_a_10kb_log_path_is_refused_before_a_rootfs_is_made(
        n: Node, pods: dict[str, Pod]) -> None:
    pod_id, pod = pods["runc"]
    config = n.container_config("longlog", "true")
    config.log_path = "l" * 10_240
    before = leftovers(n)
    log_start = n.daemon.log_path.stat().st_size
    refused(lambda: n.create(pod_id, pod, config), INVALID, "log_path", "4095")
    assert_nothing_left(n, before)
    # Refused at the reservation: the storage pool never made a rootfs, so
    # the cleanup stack had none to undo (both are logged, by design, so
    # that "nothing half-done" can be checked).
    with open(n.daemon.log_path, encoding="utf-8", errors="replace") as f:
        f.seek(log_start)
        logged = f.read()
    assert "Created rootfs of container" not in logged
    assert ": remove the rootfs" not in logged


# --- ExecSync ------------------------------------------------------------------

BAD_EXEC: dict[str, tuple[list[str], int, tuple[str, ...]]] = {
    "NUL byte in an argument": (["echo", "a\x00b"], 5, ("cmd[1]", "NUL")),
    "NUL byte in the command": (["ec\x00ho"], 5, ("cmd[0]", "NUL")),
    "empty cmd": ([], 5, ("cmd is required",)),
    "empty command": ([""], 5, ("cmd[0] is empty",)),
    "negative timeout": (["true"], -1, ("timeout -1", "negative")),
}


@pytest.mark.parametrize("case", list(BAD_EXEC))
def test_bad_exec_sync_is_invalid_argument(n: Node, box: str, case: str) -> None:
    cmd, timeout, words = BAD_EXEC[case]
    refused(lambda: n.daemon.runtime.ExecSync(api.ExecSyncRequest(
        container_id=box, cmd=cmd, timeout=timeout), timeout=30), INVALID, *words)
    assert n.exec(box, "true").exit_code == 0


def test_a_running_containers_monitor_is_known_alive(n: Node, box: str) -> None:
    # What stop, status and cleanup ask before they trust or kill a monitor;
    # a running monitor's title replaces the command line it was started with.
    state_dir = n.daemon.runroot / "c" / box
    pid = int((state_dir / "conmon.pid").read_text())
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(
        f"podvisor-conmon {box}".encode())
    assert monitor.conmon_alive(str(state_dir))


def test_exec_without_timeout_is_killed_at_the_calls_deadline(n: Node, box: str) -> None:
    marker = f"{3600 + uuid.uuid4().int % 1000}"
    refused(lambda: n.daemon.runtime.ExecSync(api.ExecSyncRequest(
        container_id=box, cmd=["sleep", marker], timeout=0), timeout=3),
        grpc.StatusCode.DEADLINE_EXCEEDED)

    def gone() -> bool:
        listing = n.exec(box, "ps").stdout.decode()
        return f"sleep {marker}" not in listing

    # conmon kills the command at the deadline; nothing the caller gave up
    # on keeps running in the container.
    poll_until(gone, 10, what=f"sleep {marker} gone from the container")
    assert n.status(box).state == api.CONTAINER_RUNNING


# --- RunPodSandbox -------------------------------------------------------------

def pod_leftovers(n: Node) -> dict[str, set[str]]:
    return {kind: found for kind, found in leftovers(n).items()
            if kind not in ("containers listed", "container records")}


def test_an_invalid_pod_name_without_hostname_is_refused_and_holds_nothing(n: Node) -> None:
    config = n.pod_config("bad-name")
    config.metadata.name = "Bad_Name."
    config.hostname = ""
    before = pod_leftovers(n)
    refused(lambda: n.run_pod(config), INVALID, "Bad_Name.", "set hostname")
    assert_nothing_left(n, before, pod_leftovers)
    # The name was never held: the same pod with a hostname starts.
    config.hostname = "fixed"
    n.remove_pod(n.run_pod(config))


@pytest.mark.parametrize("hostname", ["a..b", "a.-b", "x" * 64, "a" * 63 + ".b",
                                      "-Fetc/passwd", "line\nbreak"])
def test_an_invalid_hostname_is_refused(n: Node, hostname: str) -> None:
    config = n.pod_config("bad-hostname")
    config.hostname = hostname
    before = pod_leftovers(n)
    refused(lambda: n.run_pod(config), INVALID, "hostname", "not a valid host name")
    assert_nothing_left(n, before, pod_leftovers)


def test_a_long_pod_name_gives_the_kubelets_hostname(n: Node) -> None:
    # Cut at 63 characters the name ends in '-', which no host name may.
    name = "h" * 62 + "-" + "t" * 40
    config = n.pod_config("long")
    config.metadata.name = name
    config.hostname = ""
    pod_id = n.run_pod(config)
    try:
        assert n.pod_status(pod_id).status.metadata.name == name
        container_id = n.run(pod_id, config, n.container_config("hn", "hostname"))
        n.wait_state(container_id, api.CONTAINER_EXITED)
        lines = log_lines(Path(config.log_directory) / "hn.log")
        assert ("stdout", "F", "h" * 62) in lines, lines
    finally:
        n.remove_pod(pod_id)


def test_a_64_character_fqdn_is_the_pods_hostname(n: Node) -> None:
    # setHostnameAsFQDN: the kubelet sends the FQDN, up to HOST_NAME_MAX (64).
    fqdn = "h" * 31 + "." + "t" * 32
    config = n.pod_config("fqdn")
    config.hostname = fqdn
    pod_id = n.run_pod(config)
    try:
        container_id = n.run(pod_id, config, n.container_config(
            "fqdn", "hostname; cat /etc/hostname; echo $HOSTNAME"))
        n.wait_state(container_id, api.CONTAINER_EXITED)
        lines = log_lines(Path(config.log_directory) / "fqdn.log")
        assert lines == [("stdout", "F", fqdn)] * 3, lines
    finally:
        n.remove_pod(pod_id)


BAD_LOG_DIRECTORIES = {
    "relative with ..": ("../../etc-rel", ("log_directory", "absolute")),
    "relative": ("relative/logs", ("log_directory", "absolute")),
    "absolute with ..": ("/var/log/pods/../../etc", ("log_directory", "'..'")),
    "component over 255 bytes": ("/" + "d" * 300, ("log_directory", "255")),
    "over 4095 bytes": ("/d" * 2100, ("log_directory", "4095")),
    "NUL byte": ("/var/log/a\x00b", ("log_directory", "NUL")),
}


@pytest.mark.parametrize("case", list(BAD_LOG_DIRECTORIES))
def test_a_bad_log_directory_is_refused_at_run_pod_sandbox(n: Node, case: str) -> None:
    value, words = BAD_LOG_DIRECTORIES[case]
    config = n.pod_config("bad-logdir")
    good = config.log_directory
    config.log_directory = value
    before = pod_leftovers(n)
    refused(lambda: n.run_pod(config), INVALID, *words)
    assert_nothing_left(n, before, pod_leftovers)
    config.log_directory = good
    n.remove_pod(n.run_pod(config))


# --- deadlines of the runtime pool's own waits (in-process) ----------------------

# --- cpusets: checked against the node as it is at each create ------------------

def test_cpusets_are_checked_against_what_is_online_at_each_create(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("cgroup v2 takes any CPU list (the next test)")
    (tmp_path / "cpu").mkdir()
    (tmp_path / "node").mkdir()
    (tmp_path / "cpu" / "online").write_text("0-1\n")
    (tmp_path / "node" / "online").write_text("0-1\n")
    (tmp_path / "node" / "has_memory").write_text("0\n")  # node 1 has CPUs only
    monkeypatch.setattr(spec_context, "SYS_DEVICES", str(tmp_path))

    def create(**wanted: str) -> dict[str, Any]:
        node = specs.node_facts("cgroupfs", "runc", "/usr/sbin/runc")
        return spec_resources.linux_resources(api.LinuxContainerResources(**wanted), node)

    assert create(cpuset_cpus="1", cpuset_mems="0")["cpu"] == {"cpus": "1", "mems": "0"}
    with pytest.raises(InvalidArgument, match="cpuset_mems 1 names memory nodes"):
        create(cpuset_mems="1")
    # CPU 1 goes offline while the daemon runs; the next create knows.
    (tmp_path / "cpu" / "online").write_text("0\n")
    with pytest.raises(InvalidArgument, match="cpuset_cpus 1 names CPUs"):
        create(cpuset_cpus="1")
    # No has_memory (an older kernel): the online nodes are what there is.
    (tmp_path / "node" / "has_memory").unlink()
    assert create(cpuset_mems="1")["cpu"] == {"mems": "1"}


def test_cgroup_v2_takes_offline_cpus_but_not_bad_syntax() -> None:
    node = spec_context.with_cpusets(spec_context.NodeFacts(cgroup_v2=True, cpus=frozenset({0})))
    assert (node.cpus, node.mems) == (None, None)
    wanted = api.LinuxContainerResources(cpuset_cpus="4000", cpuset_mems="0-63")
    assert spec_resources.linux_resources(wanted, node)["cpu"] == {"cpus": "4000",
                                                                   "mems": "0-63"}
    with pytest.raises(InvalidArgument, match="N <= M"):
        spec_resources.linux_resources(api.LinuxContainerResources(cpuset_cpus="1-0"), node)


@pytest.fixture
def runc() -> Iterator[Runtime]:
    runtime = runtime_or_skip("runc")
    yield runtime
    shutil.rmtree(runtime.root.parent)


@dataclass(frozen=True)
class GivenUp(monitor.Handler):
    """A handler whose monitor start and create are given all the time they
    need (``time_left``) whatever the deadline, as when a slow create
    outlasts the caller: spawned past its deadline, the create succeeds and
    the monitor finds nobody to tell, however loaded the node is."""

    def time_left(self, deadline: float) -> float:
        return 60.0


def test_a_monitor_given_up_on_deletes_its_container(runc: Runtime) -> None:
    container = Container(runc, short_tmpdir())
    try:
        container.make_bundle(["sleep", "1000"])
        handler = GivenUp("runc", runc.path, str(runc.root))
        # The monitor has started (spawn waited for it), and the worker
        # stops waiting for the created container: it closes the sync pipe.
        with pytest.raises(DeadlineExceeded):
            monitor.spawn(handler, container.id, str(container.bundle),
                          str(container.state_dir), str(container.exit_dir),
                          str(container.log_path), deadline=time.monotonic(),
                          terminal=False, stdin=False, stdin_once=False)
        running = monitor_pids(str(container.state_dir))
        assert running, "the detached monitor is running"
        container.conmon_pid = min(running)  # for cleanup, should this fail
        # Its create, then its delete (which has a bound of its own).
        poll_until(lambda: not monitor_pids(str(container.state_dir)),
                   conmon_monitor.DELETE_TIMEOUT + 30, what="the monitor gone")
        assert "nobody read the sync line" in (container.state_dir / "conmon.log").read_text()
        assert runc.state(container.id) is None
        assert not (container.state_dir / "conmon.pid").exists()
        assert not (container.exit_dir / container.id).exists()
    finally:
        try:
            container.cleanup()
        finally:
            shutil.rmtree(container.base)


def test_the_delete_after_a_failed_create_is_not_cut_short(tmp_path: Path) -> None:
    # A runtime whose create outlives --create-timeout (what is left of the
    # spawner's deadline, here half a second) and whose delete then takes
    # longer than that: the delete still runs to its end.
    deleted = tmp_path / "deleted"
    fake = tmp_path / "slow-runtime"
    # argv: --root R --log L --log-format json <command> ...
    fake.write_text(f"#!/bin/sh\ncase \"$7\" in\n  create) exec sleep 60 ;;\n"
                    f"  delete) sleep 2; touch {deleted} ;;\nesac\n")
    fake.chmod(0o755)
    state_dir = short_tmpdir()
    try:
        started = subprocess.run(
            [monitor.conmon_binary(), "monitor", "--id", "slow-delete", "--bundle",
             str(tmp_path), "--runtime", str(fake), "--runtime-root", str(tmp_path / "root"),
             "--state-dir", str(state_dir), "--exit-dir", str(tmp_path / "exits"),
             "--log-path", str(tmp_path / "ctr.log"), "--create-timeout", "0.5"],
            capture_output=True, text=True, timeout=60, check=False)
        assert started.returncode == 0, started.stderr
        poll_until(deleted.exists, 30, what="the runtime's delete finished")
        poll_until(lambda: not monitor_pids(str(state_dir)), 30, what="the monitor gone")
        logged = (state_dir / "conmon.log").read_text()
        assert "create timed out after 0.5s" in logged
        assert "Traceback" not in logged, logged
    finally:
        shutil.rmtree(state_dir)


def test_a_runtime_command_past_its_deadline_is_deadline_exceeded(tmp_path: Path) -> None:
    slow = tmp_path / "slow-runtime"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    handler = monitor.Handler("slow", str(slow), str(tmp_path))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="slow start did not finish"):
        handler.run("start", "some-id", deadline=time.monotonic() + 0.2)
    assert time.monotonic() - started < monitor.RUN_FLOOR + 5


def test_a_silent_monitor_is_deadline_exceeded() -> None:
    state_dir = short_tmpdir()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(os.fspath(state_dir / "ctl"))
            server.listen(1)
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="did not answer reopen"):
                monitor.ctl(os.fspath(state_dir), "reopen", time.monotonic() + 0.2)
            assert time.monotonic() - started < monitor.RUN_FLOOR + 5
    finally:
        shutil.rmtree(state_dir)


def test_a_reopen_the_monitor_cannot_do_is_failed_precondition(
        n: Node, pods: dict[str, Pod]) -> None:
    pod_id, config = pods["runc"]
    name = f"reopen-{uuid.uuid4().hex[:6]}"
    container = n.container_config(name, "while :; do echo x; sleep 0.2; done")
    container.log_path = f"{name}/0.log"
    container_id = n.run(pod_id, config, container)
    log_dir = Path(config.log_directory) / name
    poll_until(lambda: (log_dir / "0.log").exists(), 10, what="the container's log")
    # The kubelet rotated the log and its directory went: conmon cannot open
    # a new file there, says so, and keeps writing the old one.
    shutil.rmtree(log_dir)
    refused(lambda: n.daemon.runtime.ReopenContainerLog(
        api.ReopenContainerLogRequest(container_id=container_id), timeout=10),
        PRECONDITION, "reopen")
    assert n.status(container_id).state == api.CONTAINER_RUNNING
    n.daemon.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=container_id),
                                     timeout=30)
