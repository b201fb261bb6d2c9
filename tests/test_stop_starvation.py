"""A mass drain does not starve the runtime pool: StopContainer's grace
period waits on the worker's event loop, not in one of its threads, and
the bus does not count such waits against a worker's capacity.

More containers than the runtime pool has threads (2 workers x 4, set
small here) ignore SIGTERM and get StopContainer with a 60 s grace
period, all at once. While every stop is still waiting, Status,
ContainerStatus, ExecSync and a new pod's container are served within a
normal call's deadline; then the stops end with SIGKILL as they must.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from podfixtures import IDLE, Node, node

from podvisor.proto import api_pb2 as api

pytestmark = pytest.mark.timeout(300)

STUBBORN = "trap '' TERM; sleep 86400 & wait; sleep 86400"
THREADS = 4   # per runtime worker
STOPPING = 12  # more than the pool's 2 x THREADS
GRACE = 60
CALL = 10      # a normal call's deadline, far below the grace period


@pytest.fixture(scope="module")
def n() -> Iterator[Node]:
    with node(workers={"runtime": 2, "storage": 2, "max_inflight": THREADS}) as here:
        yield here


def test_stops_in_their_grace_period_do_not_hold_up_other_calls(n: Node) -> None:
    config = n.pod_config("drain")
    pod_id = n.run_pod(config)
    stubborn = [n.run(pod_id, config, n.container_config(f"stubborn-{i}", STUBBORN))
                for i in range(STOPPING)]
    probe = n.run(pod_id, config, n.container_config("probe", IDLE))
    for cid in [*stubborn, probe]:
        n.wait_state(cid, api.CONTAINER_RUNNING)
    runtime = n.daemon.runtime
    with ThreadPoolExecutor(STOPPING) as pool:
        stops: list[Future[api.StopContainerResponse]] = [
            pool.submit(runtime.StopContainer, api.StopContainerRequest(
                container_id=cid, timeout=GRACE), timeout=GRACE + 60) for cid in stubborn]
        # Each stop is in its grace period: the containers ignore SIGTERM.
        for cid in stubborn:
            assert n.status(cid).state == api.CONTAINER_RUNNING
        assert not any(f.done() for f in stops)
        runtime.Status(api.StatusRequest(), timeout=CALL)
        assert n.exec(probe, "echo", "served", timeout=CALL).stdout == b"served\n"
        late = n.run(pod_id, config, n.container_config("late", IDLE))
        assert n.wait_state(late, api.CONTAINER_RUNNING, timeout=CALL).state
        assert not any(f.done() for f in stops), "a stop ended before its grace period"
        # Shorten the wait: a stop with no grace kills at once, as the CRI allows.
        for cid in stubborn:
            runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=0),
                                  timeout=CALL)
        for future in stops:
            future.result(timeout=CALL)
    for cid in stubborn:
        status = n.status(cid)
        assert status.state == api.CONTAINER_EXITED and status.exit_code == 137
