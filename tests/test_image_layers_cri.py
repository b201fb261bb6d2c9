"""What pulled layers become on the node, through the CRI socket: whiteouts
applied in a container's rootfs, escaping layers refused at pull with
nothing listed, unused layers removed with their image, pull metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import imagebuild
import pytest
from podfixtures import Node, node

from podvisor.proto import api_pb2 as api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def n() -> Iterator[Node]:
    with node() as here:
        yield here


def push(n: Node, repo: str, layers: list[imagebuild.Layer]) -> str:
    image = imagebuild.build_image(layers)
    imagebuild.Pusher(n.registry).push_image(repo, "1", image)
    return f"{n.registry}/{repo}:1"


def unpacked_layers(n: Node) -> set[str]:
    root = n.daemon.base / "root" / "storage" / "layers"
    return {p.name for p in root.iterdir() if not p.name.startswith(".")} if root.is_dir() \
        else set()


def pull(n: Node, ref: str) -> str:
    return str(n.daemon.images.PullImage(
        api.PullImageRequest(image=api.ImageSpec(image=ref)), timeout=120).image_ref)


def test_whiteouts_apply_in_the_container_rootfs(n: Node) -> None:
    base = imagebuild.busybox_layer(("sh", "ls", "cat", "sleep"))
    base.dir("data").file("data/keep", b"k").file("data/gone", b"g")
    base.dir("opaque").file("opaque/old", b"o")
    top = imagebuild.Layer().whiteout("data/gone").dir("opaque").file(
        "opaque/.wh..wh..opq", b"").file("opaque/new", b"n")
    ref = push(n, "test/whiteout", [base, top])
    pull(n, ref)
    pod = n.pod_config("wh")
    pod_id = n.run_pod(pod)
    try:
        config = n.container_config("wh", "sleep 3600")
        config.image.image = ref
        box = n.run(pod_id, pod, config)
        n.wait_state(box, api.CONTAINER_RUNNING)
        assert n.exec(box, "ls", "/data").stdout.split() == [b"keep"]
        assert n.exec(box, "ls", "/opaque").stdout.split() == [b"new"]
    finally:
        n.remove_pod(pod_id)


@pytest.mark.parametrize("layer", [
    imagebuild.Layer().file("../escape", b"x"),
    imagebuild.Layer().symlink("link", "/etc").file("link/passwd", b"x"),
], ids=["dotdot", "symlink-escape"])
def test_an_escaping_layer_is_refused_and_nothing_is_listed(n: Node,
                                                            layer: imagebuild.Layer) -> None:
    ref = push(n, "test/escape", [imagebuild.busybox_layer(("sh",)), layer])
    before = unpacked_layers(n)
    with pytest.raises(grpc.RpcError) as err:
        pull(n, ref)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "was not unpacked" in (err.value.details() or "")
    listed = n.daemon.images.ListImages(api.ListImagesRequest(), timeout=10).images
    assert not any("test/escape" in tag for image in listed for tag in image.repo_tags)
    assert unpacked_layers(n) <= before


def test_removing_an_image_removes_its_unused_layers(n: Node) -> None:
    shared = imagebuild.busybox_layer(("sh", "true"))
    first = push(n, "test/gc-a", [shared, imagebuild.Layer().file("a.txt", b"a")])
    second = push(n, "test/gc-b", [shared, imagebuild.Layer().file("b.txt", b"b")])
    before = unpacked_layers(n)
    pull(n, first)
    pull(n, second)
    added = unpacked_layers(n) - before
    assert len(added) == 3  # the shared base once, one top layer each
    n.daemon.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=first)),
                                timeout=30)
    assert len(unpacked_layers(n) - before) == 2  # a's top went; the base stays for b
    n.daemon.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=second)),
                                timeout=30)
    assert unpacked_layers(n) - before == set()


def test_pulls_are_counted_in_metrics(n: Node) -> None:
    ref = push(n, "test/metrics", [imagebuild.busybox_layer(("sh",)),
                                   imagebuild.random_layer(4096)])
    pull(n, ref)
    with pytest.raises(grpc.RpcError):
        pull(n, f"{n.registry}/test/absent:1")
    text = n.daemon.metrics()
    assert re.search(r'podvisor_image_pulls_total\{result="OK"\} [1-9]', text)
    assert re.search(r'podvisor_image_pulls_total\{result="NOT_FOUND"\} [1-9]', text)
    received = re.search(r"podvisor_image_pull_bytes_total ([0-9.e+]+)", text)
    assert received and float(received.group(1)) > 4096
    layers = re.search(r"podvisor_image_pull_layers_total ([0-9.e+]+)", text)
    assert layers and float(layers.group(1)) >= 2
    n.daemon.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=ref)),
                                timeout=30)
