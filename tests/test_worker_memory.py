"""What a runtime worker keeps after serving a burst of pods, seen from outside.

- Its op threads (workers/opthreads.py) grow with the burst and end once
  idle, while the change feed's long poll stays in flight all along.
- It gives malloc's free pages back after the burst although that poll is
  always in flight (workers/base.py, "quiet, not idle").
- What it served is gone with the pods: removed pods are neither listed
  nor found, and the next pod starts on the shrunk pool.

Memory figures themselves are bench/daemon_mem.sh's, never asserted here.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from daemonlib import poll_until
from podfixtures import IDLE, Node, node

from podvisor.proto import api_pb2 as api
from podvisor.workers import opthreads

pytestmark = pytest.mark.timeout(300)

BURST = 8


@pytest.fixture(scope="module")
def n() -> Iterator[Node]:
    with node(workers={"runtime": 1}) as here:
        yield here


def op_threads(pid: int) -> int:
    """The worker's threads but its main thread and ZeroMQ's (``ZMQbg/...``)."""
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            continue  # ended meanwhile
    return sum(1 for name in names if not name.startswith("ZMQbg")) - 1


def runtime_log(n: Node, offset: int) -> str:
    with open(n.daemon.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def test_a_burst_leaves_no_threads_and_no_pods_behind(n: Node) -> None:
    pid = n.daemon.workers()[("runtime", 1)]["pid"]
    offset = n.daemon.log_path.stat().st_size

    def start(i: int) -> str:
        config = n.pod_config(f"burst-{i}")
        pod_id = n.run_pod(config)
        n.wait_state(n.run(pod_id, config, n.container_config("idle", IDLE)),
                     api.CONTAINER_RUNNING)
        return pod_id

    # The most op threads seen while the burst runs: sampled, since on a
    # slow machine the first threads may idle out before the burst ends.
    most = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            most[0] = max(most[0], op_threads(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(BURST) as pool:
            pods = list(pool.map(start, range(BURST)))
    finally:
        done.set()
        sampler.join()
    # The pool grew to serve the burst at once (beside the feed's poll)...
    assert most[0] >= 3, most[0]
    with ThreadPoolExecutor(BURST) as pool:
        list(pool.map(n.remove_pod, pods))
    # ...and shrinks once idle: the feed's poll keeps one thread, a status
    # read may hold another for a moment.
    poll_until(lambda: op_threads(pid) <= 2, opthreads.IDLE_EXIT * 4,
               what="the op threads back to the feed's")
    # Trimmed after the burst though the feed's poll never left the worker.
    poll_until(lambda: re.search(r"\[runtime worker 1\].*Gave malloc's free pages back",
                                 runtime_log(n, offset)), 30,
               what="a trim in the runtime worker's log")
    assert n.daemon.workers()[("runtime", 1)]["pid"] == pid  # the same worker all along

    listed = {p.id for p in n.daemon.runtime.ListPodSandbox(
        api.ListPodSandboxRequest(), timeout=10).items}
    assert not listed & set(pods)
    for pod_id in pods:
        with pytest.raises(grpc.RpcError) as err:
            n.daemon.runtime.PodSandboxStatus(
                api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The shrunk pool starts threads again for the next pod.
    config = n.pod_config("after")
    pod_id = n.run_pod(config)
    cid = n.run(pod_id, config, n.container_config("idle", IDLE))
    assert n.wait_state(cid, api.CONTAINER_RUNNING).state == api.CONTAINER_RUNNING
    assert n.pod_status(pod_id).status.state == api.SANDBOX_READY
    n.remove_pod(pod_id)
