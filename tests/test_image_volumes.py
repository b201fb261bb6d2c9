"""Image volumes (CRI ``Mount.image``) through the CRI socket: an image's
root filesystem mounted read-only in a container, whole or a directory of
it, reported in ContainerStatus with the image's id, and removed with the
container."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from podfixtures import IDLE, Node

from podvisor.proto import api_pb2 as api

pytestmark = pytest.mark.timeout(240)



@pytest.fixture(scope="module")
def pod(n: Node) -> tuple[str, api.PodSandboxConfig]:
    config = n.pod_config("volumes")
    return n.run_pod(config), config


def volume(n: Node, sub_path: str = "", readonly: bool = True,
           image: str = "") -> api.Mount:
    return api.Mount(container_path="/mnt/vol", readonly=readonly, image_sub_path=sub_path,
                     image=api.ImageSpec(image=image or n.image))


def with_volume(n: Node, name: str, mount: api.Mount) -> api.ContainerConfig:
    config = n.container_config(name, IDLE)
    config.mounts.append(mount)
    return config


def volume_dirs(n: Node) -> list[str]:
    return [p.name for p in Path(n.daemon.base, "root/storage/containers").iterdir()
            if "-image-" in p.name]


def test_the_image_is_mounted_read_only_and_reported(n: Node,
                                                     pod: tuple[str, api.PodSandboxConfig]) -> None:
    cid = n.run(pod[0], pod[1], with_volume(n, "whole", volume(n)))
    n.wait_state(cid, api.CONTAINER_RUNNING)
    assert n.exec(cid, "ls", "/mnt/vol/bin/sh").exit_code == 0
    # Its programs run from there: no noexec.
    assert n.exec(cid, "/mnt/vol/bin/echo", "from the volume").stdout == b"from the volume\n"
    written = n.exec(cid, "touch", "/mnt/vol/new")
    assert written.exit_code != 0 and b"Read-only file system" in written.stderr
    image_id = n.daemon.images.ImageStatus(api.ImageStatusRequest(
        image=api.ImageSpec(image=n.image)), timeout=10).image.id
    [mount] = [m for m in n.status(cid).mounts if m.container_path == "/mnt/vol"]
    assert mount.image.image == n.image and mount.image.image_ref == image_id
    n.daemon.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=cid), timeout=60)
    assert not [d for d in volume_dirs(n) if d.startswith(cid)]


def test_a_sub_path_mounts_that_directory(n: Node, pod: tuple[str, api.PodSandboxConfig]) -> None:
    cid = n.run(pod[0], pod[1], with_volume(n, "sub", volume(n, sub_path="bin")))
    n.wait_state(cid, api.CONTAINER_RUNNING)
    assert n.exec(cid, "ls", "/mnt/vol/sh").exit_code == 0
    assert n.exec(cid, "ls", "/mnt/vol/bin").exit_code != 0


@pytest.mark.parametrize(("mount_of", "code"), [
    (lambda n: volume(n, readonly=False), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda n: volume(n, sub_path="no/such/dir"), grpc.StatusCode.NOT_FOUND),
    (lambda n: volume(n, sub_path="../etc"), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda n: volume(n, sub_path="/etc"), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda n: volume(n, image="localhost:1/not/pulled:1"), grpc.StatusCode.NOT_FOUND),
])
def test_bad_image_volumes_are_refused_leaving_nothing(
        n: Node, pod: tuple[str, api.PodSandboxConfig], mount_of: object,
        code: grpc.StatusCode) -> None:
    assert callable(mount_of)
    with pytest.raises(grpc.RpcError) as caught:
        n.create(pod[0], pod[1], with_volume(n, "refused", mount_of(n)))
    assert caught.value.code() == code, caught.value.details()
    listed = n.daemon.runtime.ListContainers(api.ListContainersRequest(), timeout=10).containers
    assert "refused" not in {c.metadata.name for c in listed}
    live = {c.id for c in listed}
    assert all(d.split("-image-")[0] in live for d in volume_dirs(n))
