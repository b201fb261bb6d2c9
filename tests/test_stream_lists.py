"""The Stream* forms of the list RPCs through the CRI socket: the same
objects as their List* forms, in parts of at most ``CHUNK``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from podfixtures import IDLE, Node, node

from podvisor.proto import api_pb2 as api
from podvisor.supervisor.rpc.chunks import CHUNK, chunked

pytestmark = pytest.mark.timeout(180)



@pytest.fixture(scope="module")
def n() -> Iterator[Node]:
    with node() as here:
        for name in ("one", "two"):
            config = here.pod_config(name)
            pod_id = here.run_pod(config)
            here.run(pod_id, config, here.container_config(f"{name}-c", IDLE))
        yield here


def test_streams_answer_what_the_lists_answer(n: Node) -> None:
    rt, images = n.daemon.runtime, n.daemon.images
    pods = {p.id for p in rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items}
    streamed = {p.id for part in rt.StreamPodSandboxes(api.StreamPodSandboxesRequest(),
                                                       timeout=10) for p in part.pod_sandboxes}
    assert len(pods) == 2 and streamed == pods
    containers = {c.id for c in rt.ListContainers(api.ListContainersRequest(),
                                                  timeout=10).containers}
    assert {c.id for part in rt.StreamContainers(api.StreamContainersRequest(), timeout=10)
            for c in part.containers} == containers
    [pod] = [p for p in pods][:1]
    only = api.StreamContainersRequest(filter=api.ContainerFilter(pod_sandbox_id=pod))
    assert len([c for part in rt.StreamContainers(only, timeout=10) for c in part.containers]) == 1
    assert {i.id for part in images.StreamImages(api.StreamImagesRequest(), timeout=10)
            for i in part.images} == {i.id for i in images.ListImages(
                api.ListImagesRequest(), timeout=10).images}
    assert {s.attributes.id for part in rt.StreamContainerStats(
        api.StreamContainerStatsRequest(), timeout=30) for s in part.container_stats} == containers
    assert {s.attributes.id for part in rt.StreamPodSandboxStats(
        api.StreamPodSandboxStatsRequest(), timeout=30) for s in part.pod_sandbox_stats} == pods
    assert {m.pod_sandbox_id for part in rt.StreamPodSandboxMetrics(
        api.StreamPodSandboxMetricsRequest(), timeout=30)
        for m in part.pod_sandbox_metrics} == pods


def test_parts_hold_at_most_a_chunk_and_an_empty_list_is_one_empty_part() -> None:
    assert [len(p) for p in chunked(list(range(2 * CHUNK + 1)))] == [CHUNK, CHUNK, 1]
    assert [list(p) for p in chunked([])] == [[]]
