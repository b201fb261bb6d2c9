"""kill -9 of a net worker in the middle of 20 parallel setups, over the bus.

The net pool runs as in the daemon: real ``python -m podvisor.workers.net``
processes spawned by a WorkerPool, watched by Supervision, reached through
a PoolBus; only the gRPC front is left out, since no RPC calls ``net.setup``
until RunPodSandbox lands. The test drives the bus itself, kills the worker
holding requests, and checks that every call completed or failed
UNAVAILABLE, that the pool came back, and that once the failed pods are torn
down nothing is left: no namespace, veth, lease or record.

The same kill through the CRI socket, during 20 parallel RunPodSandbox
calls of a real daemon, must leave nothing either once the pods are
removed: no pod cgroup, lock file, name reservation or record of any pool
(podfixtures.leftovers).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import zmq.asyncio
from daemonlib import poll_until
from netfixtures import CniWorld, HostGuard, private_cni_world
from podfixtures import cgroup_prefix, in_prefix, leftovers, node

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import Unavailable
from podvisor.supervisor import config as cfg
from podvisor.supervisor.bus import BusTiming, Link, PoolBus
from podvisor.supervisor.daemon import worker_settings
from podvisor.supervisor.pool import RestartPolicy, WorkerCommand, WorkerPool, write_settings
from podvisor.supervisor.supervision import Supervision

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

N_PODS = 20
DEADLINE = 30.0


@pytest.fixture
def world() -> Iterator[CniWorld]:
    # A short base: the runroot must fit the daemon's 32-byte limit.
    base = Path(tempfile.mkdtemp(prefix="pv-"))
    try:
        with private_cni_world(base) as w:
            yield w
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def poll(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.005)


class NetPool:
    """A net pool of real worker processes behind a real bus."""

    def __init__(self, world: CniWorld, size: int) -> None:
        run = world.base / "run"
        (run / "bus").mkdir(parents=True, exist_ok=True)
        settings_path = str(run / "worker-settings.json")
        # The settings file the daemon would write for this world.
        config = cfg.from_dict({"root": world.settings["root"], "runroot": str(run),
                                "network": world.settings["network"]})
        write_settings(settings_path, worker_settings(config))
        endpoint = f"ipc://{run}/bus/net.sock"
        self.pool = WorkerPool("net", size, WorkerCommand(lambda _: endpoint, settings_path),
                               RestartPolicy(), lambda *_: None)
        self.bus = PoolBus("net", endpoint, BusTiming(), admit=self.pool.mark_ready,
                           on_unresponsive=self.pool.kill_unresponsive,
                           is_fatal=self.pool.is_fatal)
        self.supervision = Supervision({"net": self.pool}, {"net": self.bus})
        self.zctx = zmq.asyncio.Context()

    async def start(self) -> None:
        self.bus.bind(self.zctx)
        self.bus.start()
        self.supervision.start()
        await poll(lambda: self.pool.ready_count() == len(self.pool.slots), 20, "pool READY")

    async def stop(self) -> None:
        await self.supervision.stop(10)
        await self.bus.stop()
        self.zctx.destroy(linger=0)

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        return await self.bus.call(op, args, deadline=time.monotonic() + DEADLINE)


def pod(i: int) -> dict[str, Any]:
    return {"pod_id": f"kill{i:02d}{os.urandom(3).hex()}", "name": f"p{i}",
            "namespace": "default", "uid": f"u{i}", "port_mappings": [], "dns": None,
            "host_network": False, "cgroup_parent": ""}


def assert_holds_exactly(world: CniWorld, pods: dict[str, Any]) -> None:
    """Namespaces, leases, veths and records are those of ``pods``, no more."""
    assert sorted(world.namespaces()) == sorted(pods)
    assert sorted(world.leases()) == sorted(o["ips"][0] for o in pods.values())
    assert len(world.bridge_ports()) == len(pods)
    assert world.layout.records.ids() == sorted(pods)


async def scenario(world: CniWorld) -> None:
    net = NetPool(world, size=2)
    await net.start()
    try:
        pods = [pod(i) for i in range(N_PODS)]
        calls = [asyncio.create_task(net.call("net.setup", a)) for a in pods]
        # Kill the worker with the most requests in flight once setups are
        # under way (some records written), i.e. in the middle of the batch.
        await poll(lambda: len(world.layout.records.ids()) >= 4
                   and any(net.bus.inflight_by_pid().values()), 20, "setups under way")
        victim = max(net.bus.inflight_by_pid().items(), key=lambda kv: kv[1])[0]
        os.kill(victim, signal.SIGKILL)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)

        failed = [a for a, o in zip(pods, outcomes, strict=True) if isinstance(o, Exception)]
        done = {a["pod_id"]: o for a, o in zip(pods, outcomes, strict=True)
                if not isinstance(o, Exception)}
        unexpected = [o for o in outcomes if isinstance(o, Exception)
                      and not isinstance(o, Unavailable)]
        assert unexpected == []
        assert failed, "the kill hit no request"
        assert len({o["ips"][0] for o in done.values()}) == len(done)

        await poll(lambda: net.pool.ready_count() == 2 and victim not in
                   [s.pid for s in net.pool.slots], 10, "victim replaced")

        # The failed pods are torn down (StopPodSandbox's job); teardown
        # waits for any plugin the kill orphaned, which holds the pod lock.
        for a in failed:
            await net.call("net.teardown", {"pod_id": a["pod_id"]})
        # pyroute2's sync API must not run on an event loop's thread.
        await asyncio.to_thread(assert_holds_exactly, world, done)
        # A setup again answers what the first did: the pod is intact.
        for a in pods:
            if a["pod_id"] in done:
                assert await net.call("net.setup", a) == done[a["pod_id"]]

        await asyncio.gather(*(net.call("net.teardown", {"pod_id": p}) for p in done))
        await asyncio.to_thread(assert_holds_exactly, world, {})
        assert os.listdir(world.layout.records_dir) == []
        assert world.mounts() == []
        assert not any("CNI-DN-" in line for line in HostGuard().cni_lines())
    finally:
        await net.stop()


def test_kill_9_a_net_worker_during_twenty_parallel_setups(world: CniWorld) -> None:
    world.write_conflist()
    asyncio.run(scenario(world))


def test_kill_9_a_net_worker_during_twenty_parallel_pod_starts() -> None:
    with cgroup_prefix() as prefix, node(workers={"runtime": 2, "storage": 2, "net": 2}) as n:
        victim = n.daemon.workers()[("net", 1)]["pid"]
        configs = [in_prefix(n, f"net{i}", prefix) for i in range(N_PODS)]

        def run(config: api.PodSandboxConfig) -> str:
            try:
                return n.run_pod(config, timeout=60)
            except grpc.RpcError as exc:
                return str(exc.code().name)

        with ThreadPoolExecutor(N_PODS) as pool:
            futures = [pool.submit(run, c) for c in configs]
            poll_until(lambda: n.daemon.workers()[("net", 1)]["inflight"] > 0, 20,
                       interval=0.005, what="pod starts in flight on net worker 1")
            os.kill(victim, signal.SIGKILL)
            results = [f.result() for f in futures]
        failed = [r for r in results if len(r) != 64]
        assert set(failed) <= {"UNAVAILABLE"}, failed
        poll_until(n.daemon.all_ready, 20, what="the net pool restored")
        for pod_id in results:
            if len(pod_id) == 64:
                n.remove_pod(pod_id)
        assert leftovers(n.daemon, prefix) == []


async def send_to_a_dead_link(world: CniWorld) -> None:
    net = NetPool(world, size=1)
    await net.start()
    try:
        # A worker that died a moment ago: its link is still listed (the
        # pool has not reaped it yet) but sends to it fail. Placed first, so
        # the bus picks it; a real death hits this window only by chance.
        ghost = Link(identity=b"net/9/4194304", index=9, pid=4194304, max_inflight=16,
                     ops=frozenset(), last_seen=time.monotonic())
        live = dict(net.bus._links)
        net.bus._links.clear()
        net.bus._links.update({ghost.identity: ghost, **live})
        # A mutation (not retryable once delivered) that never reached the
        # dead worker is sent to the live one.
        await net.bus.call("net.teardown", {"pod_id": "ghost" + os.urandom(4).hex()},
                           deadline=time.monotonic() + DEADLINE)
        assert ghost.identity not in net.bus._links
        assert net.bus.stats["retries"] == 1
    finally:
        await net.stop()


def test_a_request_sent_to_a_just_died_worker_goes_to_another(world: CniWorld) -> None:
    world.write_conflist()
    asyncio.run(send_to_a_dead_link(world))
