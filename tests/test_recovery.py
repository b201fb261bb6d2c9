"""Nothing is lost or leaked when podvisor processes die: a runtime worker
killed during parallel creates, the supervisor killed while containers
run. Once the pods are removed, no cgroup, lock file, name reservation or
record of theirs is left (podfixtures.leftovers)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from daemonlib import poll_until
from podfixtures import Node, in_prefix, leftovers, log_lines
from podfixtures import n as n
from podfixtures import prefix as prefix

from podvisor.proto import api_pb2 as api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_kill_9_runtime_worker_during_parallel_creates(prefix: str, n: Node) -> None:
    pod = in_prefix(n, "burst", prefix)
    pod_id = n.run_pod(pod)
    victim = n.daemon.workers()[("runtime", 1)]["pid"]
    configs = [n.container_config(f"c{i}", "sleep 3600") for i in range(20)]

    def create(config: api.ContainerConfig) -> str:
        try:
            return n.create(pod_id, pod, config, timeout=60)
        except grpc.RpcError as exc:
            return exc.code().name

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(create, c) for c in configs]
        # Kill while creates are in flight on that worker.
        poll_until(lambda: n.daemon.workers()[("runtime", 1)]["inflight"] > 0, 20,
                   interval=0.005, what="creates in flight on runtime worker 1")
        os.kill(victim, signal.SIGKILL)
        results = [f.result() for f in futures]

    created = [r for r in results if len(r) == 64]
    failed = [r for r in results if len(r) != 64]
    assert set(failed) <= {"UNAVAILABLE"}, failed
    # The kill landed mid-burst (its calls failed or had just finished): the
    # slot is restarted either way, though perhaps only after every call
    # has returned (all of them may have finished before the kill).
    poll_until(lambda: n.daemon.workers()[("runtime", 1)]["restarts"] >= 1, 20,
               what="runtime worker 1 restarted")
    assert n.daemon.workers()[("runtime", 1)]["restarts"] == 1
    listed = {c.id for c in n.daemon.runtime.ListContainers(api.ListContainersRequest(
        filter=api.ContainerFilter(pod_sandbox_id=pod_id)), timeout=10).containers}
    # The failed creates left nothing: only the finished ones are listed...
    assert listed == set(created)
    # ...and their names are free again: a retry of a failed one works.
    retried = [c for c, r in zip(configs, results, strict=True) if r == "UNAVAILABLE"]
    for config in retried:
        created.append(n.create(pod_id, pod, config))
    for container_id in created:
        n.start(container_id)
    assert len({c.id for c in n.daemon.runtime.ListContainers(
        api.ListContainersRequest(), timeout=10).containers}) == 20
    n.remove_pod(pod_id)
    assert leftovers(n.daemon, prefix) == []
    assert not n.daemon.remove_leftovers()


def test_kill_9_supervisor_while_containers_run(prefix: str, n: Node) -> None:
    pod = in_prefix(n, "survivor", prefix)
    pod_id = n.run_pod(pod)
    ticker = n.run(pod_id, pod, n.container_config(
        "ticker", "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done"))
    quitter = n.run(pod_id, pod, n.container_config("quitter", "sleep 3600"))
    before = {s.id: s for s in (n.wait_state(ticker, api.CONTAINER_RUNNING),
                                n.wait_state(quitter, api.CONTAINER_RUNNING))}
    log = Path(pod.log_directory) / "ticker.log"
    poll_until(lambda: log.exists() and len(log_lines(log)) >= 3, 10, what="first ticks")

    os.kill(n.daemon.pid, signal.SIGKILL)
    assert n.daemon.proc is not None
    n.daemon.proc.wait()
    # While podvisor is down: the ticker keeps logging, the quitter exits.
    lines_then = len(log_lines(log))
    n.daemon.stop()
    quitter_pid = _container_pid(n, quitter)
    os.kill(quitter_pid, signal.SIGKILL)
    poll_until(lambda: len(log_lines(log)) > lines_then + 3, 10, what="logs during outage")

    n.daemon.start()
    after = {c.id: c for c in n.daemon.runtime.ListContainers(
        api.ListContainersRequest(), timeout=10).containers}
    assert set(after) == {ticker, quitter}
    running = n.status(ticker)
    assert running.state == api.CONTAINER_RUNNING
    assert running.started_at == before[ticker].started_at
    exited = n.wait_state(quitter, api.CONTAINER_EXITED)
    assert exited.exit_code == 137
    count = len(log_lines(log))
    poll_until(lambda: len(log_lines(log)) > count + 3, 10, what="logs after restart")
    assert n.pod_status(pod_id).status.state == api.SANDBOX_READY
    n.remove_pod(pod_id)
    assert leftovers(n.daemon, prefix) == []
    assert not n.daemon.remove_leftovers()


def _container_pid(n: Node, container_id: str) -> int:
    """The container's init pid, asked of its OCI runtime (podvisor is down):
    `<runtime> state` under whichever handler's root holds the container."""
    for runtime in ("crun", "runc"):
        done = subprocess.run(
            [runtime, "--root", str(n.daemon.runroot / runtime), "state", container_id],
            capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return int(json.loads(done.stdout)["pid"])
    raise AssertionError(f"no runtime knows container {container_id[:12]}")


def kill_supervisor_during(n: Node, calls: list[Callable[[], object]],
                           under_way: Callable[[], bool], what: str,
                           interval: float = 0.005) -> None:
    """Run ``calls`` at once, kill -9 the supervisor once ``under_way``,
    let the calls fail, and start the daemon again."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        poll_until(under_way, 30, interval=interval, what=what)
        os.kill(n.daemon.pid, signal.SIGKILL)
        for future in futures:
            with contextlib.suppress(grpc.RpcError):
                future.result()
    assert n.daemon.proc is not None
    n.daemon.proc.wait()
    n.daemon.stop()
    n.daemon.start()


def test_half_created_objects_are_gone_after_restart(prefix: str, n: Node) -> None:
    # A create killed mid-way: the supervisor dies while CreateContainer runs.
    pod = in_prefix(n, "half", prefix)
    pod_id = n.run_pod(pod)
    kill_supervisor_during(
        n, [lambda i=i: n.create(pod_id, pod, n.container_config(f"h{i}", "sleep 3600"))
            for i in range(8)],
        lambda: any(w["inflight"] for w in n.daemon.workers().values()), "creates in flight")
    listed = n.daemon.runtime.ListContainers(api.ListContainersRequest(), timeout=10).containers
    for container in listed:
        # Whatever survived is complete: it can be started.
        assert container.state == api.CONTAINER_CREATED
        n.start(container.id)
    records = list((n.daemon.base / "root" / "runtime" / "containers").glob("*.json"))
    assert len(records) == len(listed)
    n.remove_pod(pod_id)
    assert leftovers(n.daemon, prefix) == []
    assert not n.daemon.remove_leftovers()



def test_kill_9_supervisor_while_pods_start_leaves_only_whole_pods(
        prefix: str, n: Node) -> None:
    # RunPodSandbox runs the CNI chain and the infra's start at once
    # (supervisor/rpc/sandbox.py): the supervisor dies with pods at any
    # stage of it, namespaces made, chains and infra starts under way.
    pods = [in_prefix(n, f"start{i}", prefix) for i in range(8)]
    net_records = n.daemon.base / "root" / "net" / "pods"

    def under_way() -> bool:
        for path in net_records.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text()).get("state") in ("netns", "setting_up"):
                    return True
        return False

    kill_supervisor_during(n, [lambda pod=pod: n.run_pod(pod) for pod in pods], under_way,
                           "a pod network being set up", interval=0.002)
    listed = n.daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items
    for item in listed:
        # Whatever survived is whole: its network is there.
        status = n.pod_status(item.id).status
        assert status.network.ip, item.id
    n.remove_all_pods()
    assert leftovers(n.daemon, prefix) == []
    assert not n.daemon.remove_leftovers()
