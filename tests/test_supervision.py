"""Supervision with real processes: killed, hung and crash-looping workers,
and a killed supervisor. The kill -9 tests run pods through the kills too
(host-network ones: these daemons have no CNI config, and need no image),
and once the pods are removed nothing of theirs may be left: no cgroup,
lock file, name reservation or record (podfixtures.leftovers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import zmq
import zmq.asyncio
from daemonlib import UP_STATES, Daemon, children_of, pid_alive, poll_until
from podfixtures import cgroup_prefix, leftovers

from podvisor.proto import api_pb2 as api
from podvisor.proto import envelope
from podvisor.proto.envelope import Command
from podvisor.proto.ops import pool_ops
from podvisor.supervisor.bus import BusTiming, PoolBus
from podvisor.supervisor.pool import RestartPolicy, SlotState, WorkerSlot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

POOLS = ("image", "storage", "runtime", "net")
CALL_DEADLINE = 5.0
RESTORE_WAIT = 30.0


def host_pod(name: str, prefix: str) -> api.PodSandboxConfig:
    """A host-network pod with an infra process, its cgroup under ``prefix``."""
    uid = uuid.uuid4().hex[:12]
    options = api.NamespaceOption(network=api.NODE, pid=api.POD)
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="test", uid=uid), hostname=name,
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=f"{prefix}/pod{uid}",
            security_context=api.LinuxSandboxSecurityContext(namespace_options=options)))


def run_pod(daemon: Daemon, name: str, prefix: str) -> str:
    return str(daemon.runtime.RunPodSandbox(api.RunPodSandboxRequest(
        config=host_pod(name, prefix)), timeout=30).pod_sandbox_id)


def remove_pod(daemon: Daemon, pod_id: str) -> None:
    daemon.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    daemon.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                    timeout=30)


def remove_all_pods(daemon: Daemon) -> None:
    for item in daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items:
        remove_pod(daemon, item.id)


@contextlib.contextmanager
def pod_cgroups(daemon: Daemon) -> Iterator[str]:
    """A cgroup prefix for the test's pods; what is left there goes once the
    daemon and its containers are gone."""
    with cgroup_prefix() as prefix:
        try:
            yield prefix
        finally:
            daemon.stop()
            daemon.remove_leftovers()


def test_kill_9_one_worker_per_pool_under_load(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(workers={"image": 2, "storage": 2, "runtime": 2, "net": 2})
    with pod_cgroups(daemon) as prefix:
        _kill_one_worker_per_pool(daemon, prefix)


def _kill_one_worker_per_pool(daemon: Daemon, prefix: str) -> None:
    before = daemon.workers()
    victims = {pool: before[(pool, 1)]["pid"] for pool in POOLS}
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def caller() -> None:
        # Each caller keeps Status calls going until told to stop, so calls are
        # in flight at the moment of the kills.
        while not stop.is_set():
            started = time.monotonic()
            try:
                daemon.runtime.Status(api.StatusRequest(), timeout=CALL_DEADLINE)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                results.append((code, time.monotonic() - started))

    def churn(i: int) -> None:
        # Pods started and removed across the kills; a call the kills fail
        # is expected, whatever it leaves is removed at the end.
        for k in range(10_000):
            if stop.is_set():
                return
            with contextlib.suppress(grpc.RpcError):
                remove_pod(daemon, run_pod(daemon, f"churn{i}-{k}", prefix))

    with ThreadPoolExecutor(52) as pool:
        for _ in range(50):
            pool.submit(caller)
        for i in range(2):
            pool.submit(churn, i)
        try:
            poll_until(lambda: len(results) >= 100, 20, what="calls under way")
            for pid in victims.values():
                os.kill(pid, signal.SIGKILL)

            def back_to_full_strength() -> bool:
                now = daemon.workers()
                return all(now[(p, 1)]["pid"] not in (None, victims[p])
                           and now[(p, 1)]["state"] == "READY" for p in POOLS)
            # How fast is a benchmark's question; here only that they come back.
            poll_until(back_to_full_strength, RESTORE_WAIT, interval=0.02,
                       what="every pool restored")
            time.sleep(0.5)  # keep the load on across the restart
        finally:
            stop.set()  # a failed wait must not leave the callers looping

    codes = {code for code, _ in results}
    assert codes <= {"OK", "UNAVAILABLE"}, codes
    slowest = max(seconds for _, seconds in results)
    assert slowest < CALL_DEADLINE + 0.5, f"a call waited {slowest:.2f}s"

    doc = json.loads(daemon.cli("status", "--json").stdout)
    after = {(w["pool"], w["index"]): w for w in doc["workers"]}
    for pool in POOLS:
        assert after[(pool, 1)]["restarts"] == 1
        assert after[(pool, 1)]["pid"] != victims[pool]
        assert after[(pool, 2)]["restarts"] == 0
        assert after[(pool, 2)]["pid"] == before[(pool, 2)]["pid"]
    assert "podvisor_worker_restarts_total{pool=\"net\"} 1.0" in daemon.metrics()
    remove_all_pods(daemon)
    assert leftovers(daemon, prefix) == []


def zygote_of(daemon: Daemon) -> int | None:
    return next((pid for pid, cmdline in children_of(daemon.pid).items()
                 if cmdline.startswith(b"podvisor: worker zygote")), None)


def kill_and_see_a_forked_replacement(daemon: Daemon, victim: int) -> None:
    """kill -9 runtime worker 1 (``victim``); its replacement comes READY,
    forked (titled for its pool), not exec'd."""
    os.kill(victim, signal.SIGKILL)

    def restored() -> bool:
        now = daemon.workers()[("runtime", 1)]
        return now["pid"] not in (None, victim) and now["state"] == "READY"
    poll_until(restored, RESTORE_WAIT, what="runtime worker restored")
    replacement = daemon.workers()[("runtime", 1)]["pid"]
    assert children_of(daemon.pid)[replacement].startswith(b"podvisor: runtime worker 1")


def test_workers_forked_from_the_zygote_outlive_it(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(workers={"runtime": 1, "net": 1})
    zygote = zygote_of(daemon)
    assert zygote is not None
    before = daemon.workers()
    children = children_of(daemon.pid)
    # Each worker is the supervisor's own child (the zygote double-forks),
    # titled for its pool, not an exec of python.
    for (pool, index), worker in before.items():
        if worker["state"] == "NOT_STARTED":
            continue  # the stream pool's, started by its first call
        assert children.get(worker["pid"], b"").startswith(
            f"podvisor: {pool} worker {index}".encode()), (pool, children)

    os.kill(zygote, signal.SIGKILL)
    poll_until(lambda: not pid_alive(zygote), 10, what="zygote gone")
    assert daemon.runtime.Version(api.VersionRequest(), timeout=10).runtime_name == "podvisor"
    assert {key: w["pid"] for key, w in daemon.workers().items()} == \
        {key: w["pid"] for key, w in before.items()}

    # A worker killed afterwards is replaced by a fork from a new zygote.
    kill_and_see_a_forked_replacement(daemon, before[("runtime", 1)]["pid"])
    assert zygote_of(daemon) not in (None, zygote)
    assert daemon.runtime.Version(api.VersionRequest(), timeout=10).runtime_name == "podvisor"


def test_an_idle_zygote_exits_and_the_next_restart_forks_from_a_new_one(
        make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(workers={"runtime": 1, "net": 1}, extra="zygote_idle_exit = 0.5")
    poll_until(lambda: zygote_of(daemon) is None, 10, what="idle zygote gone")
    # The zygote is started anew for the replacement.
    kill_and_see_a_forked_replacement(daemon, daemon.workers()[("runtime", 1)]["pid"])
    assert daemon.runtime.Version(api.VersionRequest(), timeout=10).runtime_name == "podvisor"
    poll_until(lambda: zygote_of(daemon) is None, 10, what="new zygote gone when idle")


def test_hung_worker_is_killed_and_its_requests_fail_unavailable(
        make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(workers={"runtime": 1})
    hung = daemon.workers()[("runtime", 1)]["pid"]
    os.kill(hung, signal.SIGSTOP)
    try:
        started = time.monotonic()
        # A mutation held by the hung worker is not retried: UNAVAILABLE.
        with pytest.raises(grpc.RpcError) as err:
            daemon.runtime.StartContainer(api.StartContainerRequest(container_id="x"),
                                          timeout=20)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "missed heartbeats" in (err.value.details() or "")
        assert time.monotonic() - started < 5
        poll_until(lambda: not pid_alive(hung), 5, what="hung worker killed")
        # A read is served by the replacement.
        reply = daemon.runtime.Version(api.VersionRequest(), timeout=10)
        assert reply.runtime_name == "podvisor"
        assert daemon.workers()[("runtime", 1)]["restarts"] == 1
    finally:
        if pid_alive(hung):
            os.kill(hung, signal.SIGKILL)


def test_crash_looping_pool_goes_fatal_and_status_says_so(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    # A boot failure injected from outside: every net worker dies on import,
    # which needs workers started by exec, not forked from the zygote.
    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        "if b'podvisor.workers.net' in open('/proc/self/cmdline', 'rb').read():\n"
        "    os._exit(3)\n")
    env = {"PYTHONPATH": str(tmp_path)}
    ctx = zmq.Context()
    daemon = make_daemon(workers={"net": 1}, env=env, start=False,
                         extra="backoff_base = 0.1\nfatal_after = 3\nfork_from_zygote = false")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"worker.net.")
    events: list[str] = []
    try:
        # ZeroMQ connects as soon as the daemon binds, so no event is missed.
        sub.connect(f"ipc://{daemon.runroot}/bus/events.sock")
        daemon.start(wait_ready=False)

        def fatal() -> bool:
            return daemon.workers()[("net", 1)]["state"] == "FATAL"
        poll_until(fatal, 15, what="net worker FATAL")
        while sub.poll(200):
            events.append(sub.recv_multipart()[0].decode())
        reply = daemon.runtime.Status(api.StatusRequest(), timeout=10)
        network = next(c for c in reply.status.conditions if c.type == "NetworkReady")
        assert network.status is False
        assert network.reason == "NetworkPoolUnavailable"
        assert "FATAL" in network.message
        runtime = next(c for c in reply.status.conditions if c.type == "RuntimeReady")
        assert runtime.status is True
        assert 'podvisor_workers_fatal{pool="net"} 1.0' in daemon.metrics()
        assert daemon.workers()[("net", 1)]["last_exit"] == "exit status 3"
    finally:
        sub.close()
        ctx.term()
    assert events[-1] == "worker.net.fatal"
    assert "worker.net.backoff" in events and "worker.net.spawn" in events


RUNTIME_OPS = sorted(pool_ops("runtime"))


@pytest.mark.parametrize(("ops", "why"), [
    ([*RUNTIME_OPS, "runtime.frobnicate"],
     "serves ops the catalogue does not list: runtime.frobnicate"),
    (RUNTIME_OPS[1:], f"lacks catalogue ops: {RUNTIME_OPS[0]}"),
    ([*RUNTIME_OPS, 7], "its op list holds duplicates or non-strings"),
    ([*RUNTIME_OPS, RUNTIME_OPS[0]], "its op list holds duplicates or non-strings"),
], ids=["extra", "missing", "non-string", "duplicate"])
def test_a_ready_with_another_op_list_is_refused(
        ops: list[object], why: str, caplog: pytest.LogCaptureFixture) -> None:
    admitted: list[int] = []

    def admit(index: int, pid: int) -> bool:
        admitted.append(pid)
        return True

    async def scenario(endpoint: str) -> None:
        ctx = zmq.asyncio.Context()
        bus = PoolBus("runtime", endpoint, BusTiming(heartbeat_interval=30.0), admit=admit,
                      on_unresponsive=lambda pid, why: None, is_fatal=lambda: False)
        peers = []
        try:
            bus.bind(ctx)
            bus.start()
            for index, pid, advertised in ((1, 1001, ops), (2, 1002, RUNTIME_OPS)):
                peer = ctx.socket(zmq.DEALER)
                peers.append(peer)
                peer.setsockopt(zmq.LINGER, 0)
                peer.setsockopt(zmq.IDENTITY, f"runtime/{index}/{pid}".encode())
                peer.connect(endpoint)
                await peer.send_multipart(envelope.encode(Command.READY, {
                    "pool": "runtime", "index": index, "pid": pid,
                    "proto": envelope.PROTO_VERSION, "ops": advertised, "max_inflight": 4}))
            # The other build's worker is told to leave, before the pool
            # hears of it; the one with the catalogue's list joins.
            refused = await asyncio.wait_for(peers[0].recv_multipart(), 5)
            assert refused[2] == bytes([Command.DISCONNECT])
            while not bus.inflight_by_pid():
                await asyncio.sleep(0.01)
            assert admitted == [1002] and list(bus.inflight_by_pid()) == [1002]
            assert bus.stats["refused"] == 1
        finally:
            for peer in peers:
                peer.close()
            await bus.stop()
            ctx.destroy(linger=0)

    base = tempfile.mkdtemp(prefix="pv-")
    try:
        with caplog.at_level(logging.ERROR, logger="podvisor.supervisor.bus"):
            asyncio.run(asyncio.wait_for(scenario(f"ipc://{base}/runtime.sock"), 20))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert [r.getMessage() for r in caplog.records] == [
        f"Refusing worker b'runtime/1/1001' on the runtime bus: {why}"]


def test_a_worker_of_another_build_is_refused_and_its_pool_goes_fatal(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    # Every image worker advertises, and would serve, an op this
    # supervisor's catalogue does not have.
    (tmp_path / "sitecustomize.py").write_text(
        "if b'podvisor.workers.image' in open('/proc/self/cmdline', 'rb').read():\n"
        "    from podvisor.workers import base\n"
        "    init = base.WorkerProcess.__init__\n"
        "    def patched(self, options, ops, startup=None):\n"
        "        init(self, options, {**ops, 'image.frobnicate': lambda c, a: None}, startup)\n"
        "    base.WorkerProcess.__init__ = patched\n")
    # Injected at import, so by exec, not by a fork from the zygote.
    daemon = make_daemon(env={"PYTHONPATH": str(tmp_path)}, start=False,
                         extra="backoff_base = 0.1\nfatal_after = 3\nfork_from_zygote = false")
    daemon.start(wait_ready=False)

    def fatal() -> bool:
        return daemon.workers()[("image", 1)]["state"] == "FATAL"
    poll_until(fatal, 15, what="image worker FATAL")
    log = daemon.log_path.read_text()
    refusals = re.findall(r"ERROR \[supervisor\] .*Refusing worker b'image/1/\d+' on the image "
                          r"bus: serves ops the catalogue does not list: image\.frobnicate$",
                          log, re.MULTILINE)
    # Each start was refused, never once given work.
    assert len(refusals) == 3
    assert not re.search(r"\[image worker 1\] \[req=[^-]", log)
    assert 'podvisor_bus_events_total{kind="refused",pool="image"} 3.0' in daemon.metrics()
    with pytest.raises(grpc.RpcError) as err:
        daemon.images.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image="x:1")),
                                  timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "FATAL" in (err.value.details() or "")
    # The other pools, of this build, serve.
    poll_until(lambda: all(w["state"] in UP_STATES for (pool, _), w in daemon.workers().items()
                           if pool != "image"), 15, what="the other pools READY")
    assert daemon.runtime.Version(api.VersionRequest(), timeout=10).runtime_name == "podvisor"


def test_starting_to_backoff_counts_as_a_failed_start_however_late() -> None:
    # A refused or hung worker may take longer than startsecs to go; it never
    # was READY, so it did not start, and restarting it at once would loop.
    policy = RestartPolicy(backoff_base=0.5, startsecs=1.0, fatal_after=2)
    slot = WorkerSlot("image", 1)
    for pid, now in ((100, 0.0), (101, 10.0)):
        slot.spawned(pid, now=now)
        slot.exited(now=now + 5.0, how="exit status 0", policy=policy)
    assert slot.state is SlotState.FATAL and slot.fast_failures == 2


def test_kill_9_supervisor_leaves_no_orphans_and_a_new_one_starts(
        make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    with pod_cgroups(daemon) as prefix:
        _kill_supervisor(daemon, prefix)


def _kill_supervisor(daemon: Daemon, prefix: str) -> None:
    for i in range(3):
        run_pod(daemon, f"before{i}", prefix)
    workers = daemon.worker_pids()
    os.kill(daemon.pid, signal.SIGKILL)
    assert daemon.proc is not None
    daemon.proc.wait()
    poll_until(lambda: not any(pid_alive(p) for p in workers), 5,
               what="every worker gone after the supervisor")
    daemon.stop()
    daemon.start()
    reply = daemon.runtime.Version(api.VersionRequest(), timeout=10)
    assert reply.runtime_name == "podvisor"
    assert not set(workers) & {w["pid"] for w in daemon.status()["workers"]}
    remove_all_pods(daemon)
    assert leftovers(daemon, prefix) == []


def test_sigterm_stops_supervisor_and_workers(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    workers = daemon.worker_pids()
    assert daemon.stop() == 0
    assert not any(pid_alive(p) for p in workers)
    assert not daemon.socket.exists()


def test_kill_9_supervisor_mid_creates_no_old_worker_acts_after_restart(
        make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    with pod_cgroups(daemon) as prefix:
        old = daemon.worker_pids()

        def attempt(i: int) -> None:
            with contextlib.suppress(grpc.RpcError):
                run_pod(daemon, f"mid{i}", prefix)

        with ThreadPoolExecutor(20) as pool:
            for i in range(20):
                pool.submit(attempt, i)
            time.sleep(0.3)  # creates in flight in the workers
            os.kill(daemon.pid, signal.SIGKILL)
        assert daemon.proc is not None and daemon.channel is not None
        daemon.proc.wait()
        # Restarted at once, without killing the old process group (which
        # Daemon.stop would do): the new daemon must fence off the old workers.
        daemon.channel.close()
        daemon.start()
        assert [p for p in old if pid_alive(p)] == []
        unknown = [line for line in daemon.metrics().splitlines()
                   if 'kind="unknown_peer"' in line and not line.startswith("#")]
        assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in unknown), unknown
        remove_all_pods(daemon)
        assert leftovers(daemon, prefix) == []
