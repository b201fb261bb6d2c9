"""Nothing piles up: once its pods are gone, a daemon holds no pod cgroup,
lock file, name reservation or record, whatever ran beside their removal
(creates of other pods under the same cgroup parent); the start-up
reconcile removes a pod cgroup that belongs to no pod; and a RunPodSandbox
whose runtime worker is killed fails at once.

Every test puts its pods under a cgroup parent of its own
(``/pvleak-<random>/pod<uid>``), so what it counts is its own, and removes
whatever is left there at the end, fixed or not. ``leftovers`` and the
cgroup helpers are shared with the kill -9 tests of other modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from daemonlib import Daemon, poll_until
from podfixtures import Node, cgroup_exists, node

from podvisor.proto import api_pb2 as api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CGROUP_ROOT = Path("/sys/fs/cgroup")
ROUNDS = 5
PODS = 20
# Generous: without a process to wait for, the cleanup is a few runtime
# and net ops, plus a worker's restart when the pool had only that one.
KILLED_CREATE_FAILS_WITHIN = 8.0


def hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (not the cpu,cpuacct aliases)."""
    return sorted(h for h in CGROUP_ROOT.iterdir() if h.is_dir() and not h.is_symlink())


def cgroup_dirs(prefix: str) -> list[str]:
    """Every cgroup directory at or below ``prefix``, in every hierarchy."""
    found = []
    for hierarchy in hierarchies():
        for dirpath, _dirs, _files in os.walk(hierarchy / prefix.lstrip("/")):
            found.append(dirpath)
    return sorted(found)


def remove_cgroups(prefix: str) -> None:
    """rmdir what a test left under ``prefix``, deepest first."""
    for hierarchy in hierarchies():
        for dirpath, _dirs, _files in os.walk(hierarchy / prefix.lstrip("/"), topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


@contextlib.contextmanager
def cgroup_prefix() -> Iterator[str]:
    prefix = f"/pvleak-{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        remove_cgroups(prefix)


def leftovers(daemon: Daemon, prefix: str) -> list[str]:
    """What a daemon whose pods are all removed must not hold any more: pod
    cgroups under ``prefix``, lock files, name reservations, records and
    the per-pod and per-container files of the runtime, net and storage
    pools. Lock files of the image's layers stay: the image does."""
    root, run = daemon.base / "root", daemon.runroot
    found = [f"cgroup {d}" for d in cgroup_dirs(prefix)]
    for state in (root / "runtime/sandboxes", root / "runtime/containers",
                  root / "runtime/names", run / "runtime/locks", run / "runtime/cgroups",
                  run / "runtime/pods", run / "runtime/bundles", run / "runtime/exits",
                  run / "c", root / "net/pods", run / "net/locks", run / "netns",
                  root / "storage/containers", run / "storage/mounts"):
        if state.is_dir():
            found += [str(p) for p in sorted(state.iterdir())]
    layers_dir = root / "storage/layers"
    layers = {p.name for p in layers_dir.iterdir()} if layers_dir.is_dir() else set()
    locks_dir = run / "storage/locks"
    for lock in sorted(locks_dir.iterdir()) if locks_dir.is_dir() else []:
        if lock.name.removeprefix("layer-").removesuffix(".lock") not in layers:
            found.append(str(lock))
    return found


def in_prefix(n: Node, name: str, prefix: str, *, share_pid: bool = True
              ) -> api.PodSandboxConfig:
    """A pod of ``n`` whose cgroup parent is ``<prefix>/pod<uid>``."""
    config = n.pod_config(name, share_pid=share_pid)
    config.linux.cgroup_parent = f"{prefix}/pod{config.metadata.uid}"
    return config


@pytest.fixture
def n() -> Iterator[Node]:
    with node(workers={"runtime": 2, "storage": 2}) as here:
        yield here


@pytest.fixture
def prefix() -> Iterator[str]:
    with cgroup_prefix() as made:
        yield made


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
