"""Where a container's monitor lives (``conmon_cgroup``), on this host's
cgroup hierarchy with the cgroupfs driver: out of the daemon's cgroup, in
a leaf of its own, and gone with its container."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from daemonlib import poll_until
from podfixtures import Node, cgroup_prefix, in_prefix, node

from podvisor.proto import api_pb2 as api
from podvisor.workers.runtime.cgroup.hierarchy import host

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def memory_cgroup(pid: int) -> str:
    """``pid``'s cgroup in the memory hierarchy (v1) or the unified one."""
    with open(f"/proc/{pid}/cgroup", encoding="ascii") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    memory = [path for _id, controllers, path in lines if "memory" in controllers.split(",")]
    return memory[0] if memory else next(path for hid, _c, path in lines if hid == "0")


def conmon_pid(n: Node, container_id: str) -> int:
    reply = n.daemon.runtime.ContainerStatus(
        api.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=10)
    return int(json.loads(reply.info["info"])["conmon_pid"])


@pytest.fixture(params=["pod", "named"])
def placed(request: pytest.FixtureRequest) -> Iterator[tuple[Node, str, str | None]]:
    """A node whose conmon_cgroup is "pod" or a cgroup of the test's own; the
    pods' prefix; the named cgroup (None for "pod")."""
    with cgroup_prefix() as prefix, cgroup_prefix() as named:
        setting = "pod" if request.param == "pod" else named
        with node(config=f'[podvisor.runtime]\nconmon_cgroup = "{setting}"\n') as n:
            yield n, prefix, None if request.param == "pod" else named


def test_a_monitor_gets_a_leaf_of_its_own_and_it_goes_with_the_container(
        placed: tuple[Node, str, str | None]) -> None:
    n, prefix, named = placed
    pod = in_prefix(n, "placed", prefix)
    pod_id = n.run_pod(pod)
    container_id = n.run(pod_id, pod, n.container_config("c", "sleep 600"))
    base = named or pod.linux.cgroup_parent
    leaf = f"{base}/podvisor-conmon-{container_id}"
    assert memory_cgroup(conmon_pid(n, container_id)) == leaf
    assert all(os.path.isdir(d) for d in host().dirs(leaf))

    n.daemon.runtime.StopContainer(api.StopContainerRequest(container_id=container_id,
                                                            timeout=0), timeout=30)
    n.daemon.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=container_id),
                                     timeout=30)
    poll_until(lambda: not any(os.path.exists(d) for d in host().dirs(leaf)),
               10, what=f"{leaf} removed")
    n.remove_pod(pod_id)
