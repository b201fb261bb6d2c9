"""CRI names at the CRI's limits: pod names of 253 characters, namespaces
and container names of 63, 36-character uids, attempt 2^32-1. The
kubelet-style names built from them are far longer than a file name may be,
so every on-disk name derived from them is bounded (workers/fsnames.py),
and names in errors stay readable."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from podfixtures import Node, cgroup_exists, node

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import InvalidArgument, shorten
from podvisor.proto.limits import check_path
from podvisor.workers.fsnames import component

MAX_ATTEMPT = 2**32 - 1


def test_component_keeps_plain_names_and_bounds_the_rest() -> None:
    assert component("k8s_web_default_1234_0") == "k8s_web_default_1234_0"
    assert component("abc", ".lock") == "abc.lock"
    long = "k8s_" + "a" * 500
    hashed = component(long, ".lock")
    assert len(hashed.encode()) <= 255 and hashed.endswith(".lock")
    assert hashed.startswith("k8s_aaa") and "#" in hashed
    # Unsafe characters never reach the file name, even short ones.
    for hostile in ("a/b", "..", ".hidden", "a\nb", "ü" * 200, "x#y", ""):
        name = component(hostile)
        assert "/" not in name and "\n" not in name and not name.startswith(".")
        assert len(name.encode()) <= 255
    # Keys that differ only past the readable prefix, or only by a character
    # the prefix replaces, stay distinct.
    assert component("a" * 300 + "1") != component("a" * 300 + "2")
    assert component("a/b") != component("a_b")


def test_shorten_cuts_and_escapes() -> None:
    assert shorten("plain") == "plain"
    cut = shorten("x" * 10_000)
    assert len(cut) < 300 and cut.endswith("…(+9744 chars)")
    assert shorten("line\n\x1b[31mred") == "line\\x0a\\x1b[31mred"


def test_check_path_refuses_what_the_kernel_would() -> None:
    check_path("f", "/var/log/pods/" + "a" * 255)
    for bad, why in (("/x/" + "a" * 256, "component of 256"), ("/a" * 2048, "4096 bytes"),
                     ("/a\0b", "NUL")):
        with pytest.raises(InvalidArgument, match=why):
            check_path("f", bad)


def max_pod(tail: str = "") -> api.PodSandboxConfig:
    uid = str(uuid.uuid4())
    name = ("pod-" + "n" * 253)[:253 - len(tail)] + tail
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="s" * 63, uid=uid,
                                        attempt=MAX_ATTEMPT),
        # The kubelet truncates a pod's hostname to 63 characters.
        hostname=name[:63],
        linux=api.LinuxPodSandboxConfig(cgroup_parent=f"/podvisor-test/pod{uid}"))


def max_container(n: Node, name: str = "c" * 63) -> api.ContainerConfig:
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name, attempt=MAX_ATTEMPT),
        image=api.ImageSpec(image=n.image), command=["/bin/sh", "-c", "sleep 3600"],
        log_path=f"{name}/{MAX_ATTEMPT}.log")


@pytest.fixture(scope="module")
def n() -> Iterator[Node]:
    with node() as here:
        yield here


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pod_and_container_with_names_at_the_cri_limits(n: Node, tmp_path: Path) -> None:
    pod = max_pod()
    pod.log_directory = str(tmp_path / "logs")
    pod_id = n.run_pod(pod)
    container_id = n.run(pod_id, pod, max_container(n))
    running = n.wait_state(container_id, api.CONTAINER_RUNNING)
    assert running.metadata.name == "c" * 63 and running.metadata.attempt == MAX_ATTEMPT
    assert running.log_path == str(tmp_path / "logs" / ("c" * 63) / f"{MAX_ATTEMPT}.log")

    pods = n.daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(
        filter=api.PodSandboxFilter(id=pod_id)), timeout=10).items
    assert [(p.metadata.name, p.metadata.namespace, p.metadata.uid, p.metadata.attempt)
            for p in pods] == [(pod.metadata.name, pod.metadata.namespace, pod.metadata.uid,
                                MAX_ATTEMPT)]
    listed = n.daemon.runtime.ListContainers(api.ListContainersRequest(
        filter=api.ContainerFilter(pod_sandbox_id=pod_id)), timeout=10).containers
    assert [c.id for c in listed] == [container_id]
    assert n.exec(container_id, "echo", "ok").stdout == b"ok\n"

    # The same names again are taken: the error names them readably and
    # stays small, whole names being over 450 bytes.
    with pytest.raises(grpc.RpcError) as err:
        n.create(pod_id, pod, max_container(n))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    message = err.value.details() or ""
    assert "k8s_" + "c" * 63 + "_pod-nnn" in message and container_id in message
    assert len(message.encode()) < 1024

    n.daemon.runtime.StopContainer(api.StopContainerRequest(container_id=container_id,
                                                            timeout=0), timeout=30)
    n.daemon.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=container_id),
                                     timeout=30)
    n.remove_pod(pod_id)
    assert not n.daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(
        filter=api.PodSandboxFilter(id=pod_id)), timeout=10).items
    assert not cgroup_exists(pod.linux.cgroup_parent)
    # The names are free again: the same pod and container can be made anew.
    again = n.run_pod(pod)
    assert again != pod_id
    n.create(again, pod, max_container(n))
    n.remove_pod(again)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_names_that_differ_only_at_their_end_stay_distinct(n: Node, tmp_path: Path) -> None:
    first, second = max_pod("1"), max_pod("2")
    # Same uid and namespace: the names differ only in the last character.
    second.metadata.uid = first.metadata.uid
    ids = []
    for pod in (first, second):
        pod.log_directory = str(tmp_path / pod.metadata.name[-1])
        pod_id = n.run_pod(pod)
        ids.append((pod_id, n.create(pod_id, pod, max_container(n))))
    (pod1, c1), (pod2, c2) = ids
    assert pod1 != pod2 and c1 != c2
    names = {n.pod_status(p).status.metadata.name for p in (pod1, pod2)}
    assert names == {first.metadata.name, second.metadata.name}
    for pod_id, _ in ids:
        n.remove_pod(pod_id)
