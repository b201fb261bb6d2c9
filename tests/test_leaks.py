"""Nothing piles up: once its pods are gone, a daemon holds no pod cgroup,
lock file, name reservation or record, whatever ran beside their removal
(creates of other pods under the same cgroup parent); the start-up
reconcile removes a pod cgroup that belongs to no pod, and the ledger an
earlier version kept; and a RunPodSandbox whose runtime worker is killed
fails at once. Nor does cleaning up reach too far: removing a pod's old
sandbox leaves its new one running, and the kubelet's cgroups stay.

Every test puts its pods under a cgroup parent of its own
(``/pvleak-<random>/pod<uid>``), so what it counts is its own, and removes
whatever is left there at the end, fixed or not (``podfixtures``, which
the kill -9 tests of other modules share).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from daemonlib import Daemon, poll_until
from podfixtures import (
    CGROUP_ROOT,
    Node,
    cgroup_dirs,
    cgroup_exists,
    hierarchies,
    in_prefix,
    leftovers,
)
from podfixtures import n as n
from podfixtures import prefix as prefix

from podvisor.proto import api_pb2 as api
from podvisor.workers.runtime.cgroup.driver import Driver
from podvisor.workers.runtime.cgroup.hierarchy import host as cgroup_host

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 5
PODS = 20
# Generous: without a process to wait for, the cleanup is a few runtime
# and net ops, plus a worker's restart when the pool had only that one.
KILLED_CREATE_FAILS_WITHIN = 8.0


def test_pods_created_and_removed_concurrently_leave_nothing(prefix: str, n: Node) -> None:
    started = time.monotonic()
    for round_ in range(ROUNDS):
        def lifecycle(i: int, round_: int = round_) -> None:
            # With and without an infra process, some with a container.
            pod = in_prefix(n, f"r{round_}-p{i}", prefix, share_pid=i % 2 == 0)
            pod_id = n.run_pod(pod)
            if i % 4 == 0:
                n.run(pod_id, pod, n.container_config("c", "sleep 3600"))
            n.remove_pod(pod_id)

        with ThreadPoolExecutor(PODS) as pool:
            list(pool.map(lifecycle, range(PODS)))
    assert leftovers(n.daemon, prefix) == []
    assert time.monotonic() - started < 150


def test_creating_twelve_pods_while_removing_twelve_leaves_no_cgroup(
        prefix: str, n: Node) -> None:
    with ThreadPoolExecutor(12) as pool:
        old = list(pool.map(lambda i: n.run_pod(in_prefix(n, f"old{i}", prefix)), range(12)))
    configs = [in_prefix(n, f"new{i}", prefix) for i in range(12)]
    with ThreadPoolExecutor(24) as pool:
        created = [pool.submit(n.run_pod, config) for config in configs]
        removed = [pool.submit(n.remove_pod, pod_id) for pod_id in old]
        new = [f.result() for f in created]
        for f in removed:
            f.result()
    for pod_id in new:
        n.remove_pod(pod_id)
    # A removal must not take the directories of a pod created beside it:
    # runc would make them again, and nothing would ever remove them.
    assert cgroup_dirs(prefix) == []


def test_reconcile_removes_a_pod_cgroup_that_belongs_to_no_pod(prefix: str, n: Node) -> None:
    pod = in_prefix(n, "kept", prefix)
    pod_id = n.run_pod(pod)
    # Where a pod's cgroup would be, with a container's below: no pod has it.
    ghost = [h / prefix.lstrip("/") / "podghost" for h in hierarchies()]
    for directory in ghost:
        (directory / "podvisor-0123456789ab").mkdir(parents=True)
    n.daemon.stop()
    n.daemon.start()
    assert [d for d in ghost if d.exists()] == []
    assert cgroup_exists(pod.linux.cgroup_parent)
    assert n.pod_status(pod_id).status.state == api.SANDBOX_READY
    n.remove_pod(pod_id)
    assert leftovers(n.daemon, prefix) == []


def test_removing_an_old_sandbox_leaves_the_pods_new_one_running(prefix: str, n: Node) -> None:
    # The kubelet's retry of a pod: attempt 1 with the same cgroup parent as
    # attempt 0, which its garbage collection removes while attempt 1 runs.
    old = in_prefix(n, "retried", prefix)
    old_id = n.run_pod(old)
    n.run(old_id, old, n.container_config("first", "sleep 3600"))
    n.daemon.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=old_id),
                                    timeout=60)
    new = api.PodSandboxConfig()
    new.CopyFrom(old)
    new.metadata.attempt = 1
    new_id = n.run_pod(new)
    box = n.run(new_id, new, n.container_config("second", "sleep 3600"))
    n.wait_state(box, api.CONTAINER_RUNNING)
    n.daemon.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=old_id),
                                      timeout=60)
    assert n.status(box).state == api.CONTAINER_RUNNING
    assert n.exec(box, "echo", "alive").stdout == b"alive\n"
    assert n.pod_status(new_id).status.state == api.SANDBOX_READY
    n.remove_pod(new_id)
    assert leftovers(n.daemon, prefix) == []


def test_reconcile_keeps_the_kubelets_cgroups_beside_a_directory_podvisor_made(
        prefix: str, n: Node) -> None:
    # The kubelet made the pod's grandparent in every hierarchy but one,
    # where podvisor makes it; a QoS cgroup of the kubelet's sits beside the
    # pod's in another hierarchy.
    hs = hierarchies()
    ours = next((h for h in hs if h.name == "freezer"), hs[-1])
    theirs = next(h for h in hs if h != ours)
    for hierarchy in hs:
        if hierarchy != ours:
            (hierarchy / prefix.lstrip("/")).mkdir()
    pod = in_prefix(n, "mixed", prefix)
    pod_id = n.run_pod(pod)
    assert (ours / prefix.lstrip("/")).is_dir()
    kubelets = theirs / prefix.lstrip("/") / "burstable"
    kubelets.mkdir()
    n.daemon.stop()
    n.daemon.start()
    assert kubelets.is_dir()
    assert n.pod_status(pod_id).status.state == api.SANDBOX_READY
    n.remove_pod(pod_id)
    assert kubelets.is_dir()
    assert not (ours / prefix.lstrip("/")).exists()  # podvisor's part goes with its pod


def test_a_cgroup_parent_is_one_directory_however_it_is_spelled(prefix: str, n: Node) -> None:
    driver = Driver("cgroupfs", cgroup_host())
    assert driver.pod_parent("//a//b/./c/", "0" * 64) == "/a/b/c"
    assert driver.pod_parent("/", "0" * 64) == ""
    pod = in_prefix(n, "spelled", prefix)
    normal = pod.linux.cgroup_parent
    pod.linux.cgroup_parent = normal.replace("/", "//") + "/"
    pod_id = n.run_pod(pod)
    info = json.loads(n.pod_status(pod_id, verbose=True).info["info"])
    assert info["cgroup_parent"] == normal
    box = n.run(pod_id, pod, n.container_config("box", "sleep 3600"))
    pids = CGROUP_ROOT / "pids" / normal.lstrip("/")
    assert (pids / f"podvisor-{box}").is_dir()
    # What runc may leave below the pod's own cgroup goes with it.
    (pids / "podvisor-left-by-runc").mkdir()
    n.remove_pod(pod_id)
    assert leftovers(n.daemon, prefix) == []


def test_the_ledger_of_earlier_versions_is_imported_once(prefix: str, n: Node) -> None:
    # As an earlier podvisor left it: the directories of a pod still running
    # and of one long gone, in every hierarchy, listed in its ledger.
    pod = in_prefix(n, "upgraded", prefix)
    parent = pod.linux.cgroup_parent
    gone = f"{prefix}/podgone"
    listed = []
    for hierarchy in hierarchies():
        for path in (prefix, parent, gone):
            (hierarchy / path.lstrip("/")).mkdir(exist_ok=True)
            listed.append(str(hierarchy / path.lstrip("/")))
        listed.append(str(hierarchy / prefix.lstrip("/") / "podnever"))  # gone since
    listed += ["/etc", "/sys/fs/cgroup/pids/../../../etc", 7]
    pod_id = n.run_pod(pod)
    ledger = n.daemon.base / "root/runtime/cgroups-created.json"
    n.daemon.stop()
    ledger.write_text(json.dumps(listed))
    Path(f"{ledger}.lock").touch()
    n.daemon.start()
    assert not ledger.exists() and not Path(f"{ledger}.lock").exists()
    assert [h for h in hierarchies() if (h / gone.lstrip("/")).exists()] == []
    assert cgroup_exists(parent)
    assert n.pod_status(pod_id).status.state == api.SANDBOX_READY
    assert Path("/etc").is_dir()
    # The running pod's directories are podvisor's now: they go with it.
    n.remove_pod(pod_id)
    assert leftovers(n.daemon, prefix) == []


def test_run_pod_sandbox_fails_at_once_when_its_runtime_worker_is_killed(
        prefix: str, n: Node) -> None:
    pod = in_prefix(n, "victim", prefix)  # shares its PID namespace: an infra process
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["pod_id"] = n.run_pod(pod, timeout=60)
            outcome["code"] = "OK"
        except grpc.RpcError as exc:
            outcome["code"] = exc.code().name
        outcome["at"] = time.monotonic()

    caller = threading.Thread(target=run)
    caller.start()
    try:
        # The infra is recorded right before it is started: kill then, with
        # the pod's lock held by the worker starting it.
        sandbox_id = poll_until(lambda: _starting_infra(n.daemon), 30, interval=0.002,
                                what="a pod's infra process being started")
        victim = poll_until(lambda: _lock_holder(n.daemon, sandbox_id), 5, interval=0.002,
                            what="the runtime worker holding the pod's lock")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        caller.join(90)
    assert outcome["code"] == "UNAVAILABLE", outcome
    took = float(str(outcome["at"])) - killed_at
    assert took < KILLED_CREATE_FAILS_WITHIN, f"the caller waited {took:.1f}s"
    poll_until(n.daemon.all_ready, 20, what="the runtime pool restored")
    assert leftovers(n.daemon, prefix) == []


def _starting_infra(daemon: Daemon) -> str | None:
    """The id of a pod still being created whose infra is recorded."""
    for path in (daemon.base / "root/runtime/sandboxes").glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            if record.get("state") == "creating" and record.get("infra"):
                return str(record["id"])
    return None


def _lock_holder(daemon: Daemon, sandbox_id: str) -> int | None:
    """The runtime worker that has the pod's lock file open."""
    lock = f"/runtime/locks/{sandbox_id}.lock"
    for (pool, _index), worker in daemon.workers().items():
        if pool != "runtime" or not worker["pid"]:
            continue
        with contextlib.suppress(OSError):
            fd_dir = f"/proc/{worker['pid']}/fd"
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}").endswith(lock):
                        return int(worker["pid"])
    return None
