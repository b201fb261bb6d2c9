"""The status cache through the CRI socket, on a real daemon: a kept status
never outlives the change it missed (supervisor/status_cache.py).

- a container exiting on its own shows Exited with its code, found by the
  change feed; and the same when every runtime worker was killed -9 before
  the exit;
- a stop, a removal, a pull or a removal of an image is seen by the very
  next read, without polling;
- verbose reads carry their info, and right after a start come from memory.

The reads are served from memory (the metrics say hits), so each test
proves the cache was in play, not bypassed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
from pathlib import Path

import grpc
import imagebuild
import pytest
from daemonlib import poll_until
from podfixtures import APPLETS, Node

from podvisor.proto import api_pb2 as api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Until the test creates the go file in the mounted folder.
WAIT_THEN_EXIT_3 = "while [ ! -e /w/go ]; do sleep 0.05; done; exit 3"
FEED_WAIT = 30.0  # generous: a poll_until bound, never a measured time


def cache_reads(n: Node, result: str) -> int:
    found = re.search(rf'^podvisor_status_cache_reads_total{{result="{result}"}} (\S+)$',
                      n.daemon.metrics(), re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def exited(n: Node, container_id: str) -> api.ContainerStatus | None:
    status = n.status(container_id)
    return status if status.state == api.CONTAINER_EXITED else None


def waiting_container(n: Node, name: str) -> tuple[str, str, api.PodSandboxConfig, Path]:
    """A running container that exits 3 once ``<folder>/go`` exists."""
    folder = Path(tempfile.mkdtemp(prefix="pvw-"))
    pod = n.pod_config(name)
    pod_id = n.run_pod(pod)
    container_id = n.run(pod_id, pod, n.container_config(
        name, WAIT_THEN_EXIT_3, mounts=[api.Mount(container_path="/w", host_path=str(folder))]))
    return pod_id, container_id, pod, folder


def test_a_container_exiting_on_its_own_shows_exited_3(n: Node) -> None:
    pod_id, container_id, _pod, folder = waiting_container(n, "quits")
    hits = cache_reads(n, "hit")
    # Read from memory (the start's seed, or a fill after it).
    poll_until(lambda: n.status(container_id).state == api.CONTAINER_RUNNING
               and cache_reads(n, "hit") > hits, FEED_WAIT, what="a status read from memory")
    assert n.pod_status(pod_id).containers_statuses[0].state == api.CONTAINER_RUNNING
    (folder / "go").touch()
    status = poll_until(lambda: exited(n, container_id), FEED_WAIT, what="Exited")
    assert status.exit_code == 3
    pod = n.pod_status(pod_id)
    assert [(c.state, c.exit_code) for c in pod.containers_statuses] == \
        [(api.CONTAINER_EXITED, 3)]
    n.remove_pod(pod_id)
    os.unlink(folder / "go")
    os.rmdir(folder)


def test_a_stop_and_a_removal_are_seen_by_the_next_read(n: Node) -> None:
    pod = n.pod_config("stops")
    pod_id = n.run_pod(pod)
    container_id = n.run(pod_id, pod, n.container_config("idle", "sleep 3600"))
    assert n.status(container_id).state == api.CONTAINER_RUNNING
    assert n.pod_status(pod_id).status.state == api.SANDBOX_READY
    n.daemon.runtime.StopContainer(api.StopContainerRequest(container_id=container_id,
                                                            timeout=0), timeout=30)
    assert n.status(container_id).state == api.CONTAINER_EXITED
    assert n.pod_status(pod_id).containers_statuses[0].state == api.CONTAINER_EXITED
    n.daemon.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                    timeout=60)
    assert n.pod_status(pod_id).status.state == api.SANDBOX_NOTREADY
    n.daemon.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=container_id),
                                     timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        n.status(container_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert n.pod_status(pod_id).containers_statuses == []
    n.daemon.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                      timeout=60)
    with pytest.raises(grpc.RpcError) as err:
        n.pod_status(pod_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def verbose_status(n: Node, container_id: str) -> api.ContainerStatusResponse:
    return n.daemon.runtime.ContainerStatus(api.ContainerStatusRequest(
        container_id=container_id, verbose=True), timeout=10)


def test_verbose_reads_right_after_the_start_come_from_memory(n: Node) -> None:
    """critest's pattern: each verbose read right after the start; the
    feed's report of the start, a moment later, must not drop the seed."""
    pod = n.pod_config("verbose")
    pod_id = n.run_pod(pod)
    hits, misses = cache_reads(n, "hit"), cache_reads(n, "miss")
    assert json.loads(n.pod_status(pod_id, verbose=True).info["info"])["netns_path"]
    assert (cache_reads(n, "hit"), cache_reads(n, "miss")) == (hits + 1, misses)
    container_id = n.run(pod_id, pod, n.container_config("idle", "sleep 3600"))
    hits = cache_reads(n, "hit")
    info = json.loads(verbose_status(n, container_id).info["info"])
    assert info["pid"] > 0 and info["sandbox_id"] == pod_id
    assert (cache_reads(n, "hit"), cache_reads(n, "miss")) == (hits + 1, misses)
    n.daemon.runtime.StopContainer(api.StopContainerRequest(container_id=container_id,
                                                            timeout=0), timeout=30)
    assert verbose_status(n, container_id).status.state == api.CONTAINER_EXITED
    n.remove_pod(pod_id)


def test_verbose_reads_carry_their_info(n: Node) -> None:
    pod = n.pod_config("verbose")
    pod_id = n.run_pod(pod)
    container_id = n.run(pod_id, pod, n.container_config("idle", "sleep 3600"))
    assert "info" in n.pod_status(pod_id, verbose=True).info
    assert "info" in verbose_status(n, container_id).info
    image = n.daemon.images.ImageStatus(api.ImageStatusRequest(
        image=api.ImageSpec(image=n.image), verbose=True), timeout=10)
    assert image.info
    # And the plain ones after them carry none.
    assert not n.pod_status(pod_id).info
    assert not n.daemon.images.ImageStatus(api.ImageStatusRequest(
        image=api.ImageSpec(image=n.image)), timeout=10).info
    n.remove_pod(pod_id)


def test_image_reads_follow_pulls_and_removals(n: Node) -> None:
    other = f"{n.registry}/test/other:1"
    imagebuild.Pusher(n.registry).push_image("test/other", "1", imagebuild.build_image(
        [imagebuild.busybox_layer(APPLETS[:2])]))
    images = n.daemon.images

    def listed() -> set[str]:
        return {tag for image in images.ListImages(api.ListImagesRequest(), timeout=10).images
                for tag in image.repo_tags}

    def status(name: str) -> api.ImageStatusResponse:
        return images.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=name)),
                                  timeout=10)

    assert other not in listed()
    assert not status(other).image.id
    hits = cache_reads(n, "hit")
    images.PullImage(api.PullImageRequest(image=api.ImageSpec(image=other)), timeout=120)
    assert status(other).image.id  # seeded by the pull: from memory
    assert cache_reads(n, "hit") >= hits + 1
    assert other in listed()
    images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=other)), timeout=60)
    assert not status(other).image.id
    assert other not in listed()
    assert n.image in listed()


def test_an_exit_while_every_runtime_worker_was_killed_is_seen(n: Node) -> None:
    pod_id, container_id, _pod, folder = waiting_container(n, "orphan")
    assert n.status(container_id).state == api.CONTAINER_RUNNING
    workers = n.daemon.workers()
    victims = {key: w["pid"] for key, w in workers.items() if key[0] == "runtime"}
    for pid in victims.values():
        os.kill(pid, signal.SIGKILL)
    (folder / "go").touch()
    status = poll_until(lambda: exited(n, container_id), FEED_WAIT, what="Exited")
    assert status.exit_code == 3
    assert all(n.daemon.workers()[key]["pid"] != pid for key, pid in victims.items())
    assert n.pod_status(pod_id).containers_statuses[0].exit_code == 3
    n.remove_pod(pod_id)
    os.unlink(folder / "go")
    os.rmdir(folder)
