"""Pulls from the real docker-registry on 127.0.0.1, through the image ops.

One registry per module, filled once with images built from static busybox
(tests/imagebuild.py); each test gets its own node (store, run dir,
registries.conf) so tests never see each other's images.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imagebuild as build
import pytest
from registry import FaultProxy, ImageNode, Registry, start_registry

from podvisor.proto import api_pb2 as api
from podvisor.proto import image_ops
from podvisor.proto.errors import InvalidArgument, NotFound
from podvisor.workers.image.errors import DataLoss
from podvisor.workers.image.manifest import this_platform

ARCH = this_platform().architecture
OTHER_ARCH = "arm64" if ARCH != "arm64" else "amd64"


@dataclass
class World:
    registry: Registry
    single: build.Image
    multi: build.Image
    sibling: build.Image  # shares its busybox layer with ``single``
    index: build.Index
    docker: build.Image
    docker_list: build.Index

    @property
    def host(self) -> str:
        return self.registry.host


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="pv-img-"))
    registry = start_registry(base / "registry")
    try:
        busybox = build.busybox_layer()
        single = build.build_image([busybox], user="1000:1000")
        multi = build.build_image([
            busybox,
            (build.Layer().dir("etc").file("etc/motd", b"hello\n"), "zstd"),
            (build.Layer().dir("etc").whiteout("etc/hostname"), "none"),
            (build.random_layer(300_000), "gzip"),
        ], user="nobody")
        sibling = build.build_image([busybox, build.Layer().file("sibling", b"2")])
        here = build.build_image([busybox], labels={"arch": ARCH})
        there = build.build_image([build.Layer().file("other", b"arch")], arch=OTHER_ARCH,
                                  labels={"arch": OTHER_ARCH})
        index = build.build_index([(there, OTHER_ARCH, ""), (here, ARCH, "")])
        docker = build.build_image([busybox, build.Layer().file("docker", b"d")], docker=True)
        docker_there = build.build_image([build.Layer().file("x", b"y")], docker=True,
                                         arch=OTHER_ARCH)
        docker_list = build.build_index([(docker_there, OTHER_ARCH, ""), (docker, ARCH, "")],
                                        docker=True)
        pusher = build.Pusher(registry.host)
        pusher.push_image("single", "1", single)
        pusher.push_image("single", "also", single)
        pusher.push_image("multi", "1", multi)
        pusher.push_image("sibling", "1", sibling)
        pusher.push_index("multiarch", "1", index)
        pusher.push_image("docker", "1", docker)
        pusher.push_index("dockerlist", "1", docker_list)
        yield World(registry, single, multi, sibling, index, docker, docker_list)
    finally:
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def node(tmp_path: Path, world: World) -> ImageNode:
    n = ImageNode(tmp_path / "node")
    n.insecure(world.host)
    return n


@pytest.fixture
def proxy(world: World) -> Iterator[FaultProxy]:
    p = FaultProxy(world.registry)
    yield p
    p.stop()


def test_pull_single_layer_image(node: ImageNode, world: World) -> None:
    name = f"{world.host}/single:1"
    image_id = node.pull(name)
    assert image_id == world.single.id
    status = node.status(name)
    image = status.image
    assert image.id == world.single.id
    assert image.repo_tags == [name]
    assert image.repo_digests == [f"{world.host}/single@{world.single.manifest.digest}"]
    assert image.size == len(world.single.config.data) + sum(
        len(b.data) for b in world.single.layers)
    assert image.HasField("uid") and image.uid.value == 1000
    assert image.username == ""
    assert image.pinned is False
    assert status.info == {}
    expected = {world.single.id, world.single.manifest.digest,
                *(b.digest for b in world.single.layers)}
    assert set(node.blobs) == expected
    for blob in world.single.layers:
        path = node.root / "image" / "blobs" / "sha256" / blob.digest.split(":")[1]
        assert path.read_bytes() == blob.data
    assert [i.id for i in node.list()] == [world.single.id]


def test_multi_layer_image_records_each_layer_for_unpacking(node: ImageNode,
                                                            world: World) -> None:
    image_id = node.pull(f"{world.host}/multi:1")
    assert image_id == world.multi.id
    resolved = node.resolve(f"{world.host}/multi:1")
    layers = resolved.layers
    assert [layer.digest for layer in layers] == [b.digest for b in world.multi.layers]
    assert [layer.diff_id for layer in layers] == list(world.multi.diff_ids)
    assert [layer.media_type for layer in layers] == [b.media_type for b in world.multi.layers]
    assert [layer.size for layer in layers] == [len(b.data) for b in world.multi.layers]
    assert {layer.media_type.rsplit(".", 1)[-1] for layer in layers} == {
        "tar+gzip", "tar+zstd", "tar"}
    for layer, blob in zip(layers, world.multi.layers, strict=True):
        assert Path(layer.path).read_bytes() == blob.data
    assert resolved.config["config"]["User"] == "nobody" and resolved.user == "nobody"
    assert resolved.id == image_id and resolved.repo_tags == [f"{world.host}/multi:1"]
    status = node.status(image_id).image
    assert status.username == "nobody" and not status.HasField("uid")


def test_index_pulls_this_platform(node: ImageNode, world: World) -> None:
    name = f"{world.host}/multiarch:1"
    here = next(i for i in world.index.images
                if json.loads(i.config.data)["architecture"] == ARCH)
    assert node.pull(name) == here.id
    image = node.status(name).image
    repo = f"{world.host}/multiarch"
    assert image.repo_digests == [f"{repo}@{world.index.index.digest}",
                                     f"{repo}@{here.manifest.digest}"]
    verbose = json.loads(node.status(name, verbose=True).info["info"])
    assert verbose["indexDigest"] == world.index.index.digest
    assert verbose["imageSpec"]["config"]["Labels"] == {"arch": ARCH}
    other = next(i for i in world.index.images if i is not here)
    assert other.layers[0].digest not in node.blobs


def test_docker_schema2_manifest_and_manifest_list(node: ImageNode, world: World) -> None:
    assert node.pull(f"{world.host}/docker:1") == world.docker.id
    assert node.pull(f"{world.host}/dockerlist:1") == world.docker.id
    [image] = node.list()
    assert sorted(image.repo_tags) == [f"{world.host}/docker:1", f"{world.host}/dockerlist:1"]


def test_two_tags_of_one_image_are_one_image(node: ImageNode, world: World) -> None:
    assert node.pull(f"{world.host}/single:1") == node.pull(f"{world.host}/single:also")
    [image] = node.list()
    assert sorted(image.repo_tags) == [f"{world.host}/single:1", f"{world.host}/single:also"]


def test_repull_downloads_no_blob(node: ImageNode, world: World, proxy: FaultProxy) -> None:
    node.insecure(proxy.host)
    name = f"{proxy.host}/single:1"
    node.pull(name)
    before = len(proxy.log)
    assert node.pull(name) == world.single.id
    again = proxy.log[before:]
    assert again and not [entry for entry in again if "/blobs/" in entry[1]]
    # A pull by digest of a present image does not even ask the registry.
    before = len(proxy.log)
    node.pull(f"{proxy.host}/single@{world.single.manifest.digest}")
    assert len(proxy.log) == before


def test_shared_layers_are_stored_and_fetched_once(node: ImageNode, world: World,
                                                   proxy: FaultProxy) -> None:
    node.insecure(proxy.host)
    node.pull(f"{proxy.host}/single:1")
    node.pull(f"{proxy.host}/sibling:1")
    busybox = world.single.layers[0].digest
    assert world.sibling.layers[0].digest == busybox
    assert len(proxy.blob_requests(busybox)) == 1
    assert len(node.list()) == 2


def test_concurrent_pulls_of_one_reference_download_once(node: ImageNode, world: World,
                                                         proxy: FaultProxy) -> None:
    node.insecure(proxy.host)
    name = f"{proxy.host}/multi:1"
    results: list[str] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            results.append(node.pull(name))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == [world.multi.id] * 6
    for blob in world.multi.layers:
        assert len(proxy.blob_requests(blob.digest)) == 1, blob.digest
    manifests = [entry for entry in proxy.log if "/manifests/" in entry[1]]
    assert len(manifests) == 1


def test_pull_by_digest_then_find_it_by_digest_id_and_prefix(node: ImageNode,
                                                            world: World) -> None:
    by_digest = f"{world.host}/single@{world.single.manifest.digest}"
    assert node.pull(by_digest) == world.single.id
    image = node.status(by_digest).image
    assert image.repo_tags == []
    assert image.repo_digests == [by_digest]
    hex_id = world.single.id.split(":")[1]
    for name in (world.single.id, hex_id, hex_id[:12], f"sha256:{hex_id[:8]}"):
        assert node.status(name).image.id == world.single.id, name
    assert node.list(hex_id[:12])[0].id == world.single.id


def test_absent_image_status_is_empty_not_an_error(node: ImageNode, world: World) -> None:
    assert node.status(f"{world.host}/single:1") == api.ImageStatusResponse()
    assert node.status("0" * 64) == api.ImageStatusResponse()
    assert node.list(f"{world.host}/single:1") == []


def test_remove_by_tag_untags_then_by_id_removes(node: ImageNode, world: World) -> None:
    node.pull(f"{world.host}/single:1")
    node.pull(f"{world.host}/single:also")
    node.pull(f"{world.host}/sibling:1")
    node.remove(f"{world.host}/single:also")
    assert node.status(world.single.id).image.repo_tags == [f"{world.host}/single:1"]
    node.remove(world.single.id)
    assert not node.status(f"{world.host}/single:1").HasField("image")
    # The shared busybox layer stays for the sibling; the rest is gone.
    assert world.single.layers[0].digest in node.blobs
    assert world.single.id not in node.blobs
    assert world.single.manifest.digest not in node.blobs
    node.remove(world.single.id)  # idempotent
    node.remove(f"{world.host}/sibling:1")
    assert node.blobs == []
    assert node.list() == []


def test_remove_by_last_tag_or_by_digest_removes_the_image(node: ImageNode,
                                                          world: World) -> None:
    node.pull(f"{world.host}/multi:1")
    node.remove(f"{world.host}/multi:1")
    assert node.list() == [] and node.blobs == []
    node.pull(f"{world.host}/multi:1")
    node.remove(f"{world.host}/multi@{world.multi.manifest.digest}")
    assert node.list() == [] and node.blobs == []


def test_concurrent_removals_never_fail(node: ImageNode, world: World) -> None:
    node.pull(f"{world.host}/multi:1")
    errors: list[BaseException] = []

    def remove() -> None:
        try:
            node.remove(world.multi.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=remove) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert node.list() == [] and node.blobs == []


def test_pinned_images(tmp_path: Path, world: World) -> None:
    node = ImageNode(tmp_path / "pinned", image={
        "pinned_images": [f"{world.host}/multi*"],
        "pause_image": f"{world.host}/single:1"})
    node.insecure(world.host)
    node.pull(f"{world.host}/single:1")
    node.pull(f"{world.host}/multi:1")
    node.pull(f"{world.host}/sibling:1")
    pinned = {tuple(i.repo_tags): i.pinned for i in node.list()}
    assert pinned == {(f"{world.host}/single:1",): True, (f"{world.host}/multi:1",): True,
                      (f"{world.host}/sibling:1",): False}


def test_missing_tag_and_repository_are_not_found(node: ImageNode, world: World) -> None:
    with pytest.raises(NotFound) as info:
        node.pull(f"{world.host}/single:nope")
    assert "single:nope" in info.value.message and "not found" in info.value.message
    with pytest.raises(NotFound):
        node.pull(f"{world.host}/no/such/repo:1")
    assert node.blobs == []


def test_invalid_references_are_invalid_arguments(node: ImageNode) -> None:
    with pytest.raises(InvalidArgument, match="must be lowercase"):
        node.pull("Busybox")
    with pytest.raises(InvalidArgument, match=r"image\.image is required"):
        node.pull("")


def test_a_request_that_does_not_parse_is_an_invalid_argument(node: ImageNode) -> None:
    with pytest.raises(InvalidArgument, match="not a serialized PullImageRequest"):
        node.call(image_ops.PULL_IMAGE, image_ops.PullImage(request=b"\xff\xff"))
    with pytest.raises(InvalidArgument, match="not a serialized ImageStatusRequest"):
        node.call(image_ops.IMAGE_STATUS, image_ops.ImageStatus(request=b"\x0a\x05ab"))
    # A map that breaks the contract is refused by name before any op runs.
    with pytest.raises(InvalidArgument, match=r"\$\.image"):
        node.call(image_ops.RESOLVE_IMAGE, image_ops.ResolveImage(image=7))  # type: ignore[arg-type]


def test_a_pull_reports_what_it_downloaded(node: ImageNode, world: World) -> None:
    request = api.PullImageRequest(image=api.ImageSpec(image=f"{world.host}/multi:1"))
    args = image_ops.PullImage(request=request.SerializeToString())
    first = node.call(image_ops.PULL_IMAGE, args)
    assert api.PullImageResponse.FromString(first.response).image_ref == world.multi.id
    assert first.layers_fetched == len(world.multi.layers)
    assert first.bytes_received >= sum(len(b.data) for b in world.multi.layers)
    again = node.call(image_ops.PULL_IMAGE, args)
    assert (again.layers_fetched, again.bytes_received) == (0, 0)


def test_an_image_whose_config_is_lost_does_not_resolve(node: ImageNode, world: World) -> None:
    image_id = node.pull(f"{world.host}/single:1")
    (node.root / "image" / "blobs" / "sha256" / image_id.split(":")[1]).unlink()
    with pytest.raises(DataLoss, match="config of image"):
        node.resolve(image_id)
    assert node.status(image_id).image.id == image_id  # still listed, to be removed


def test_short_name_uses_registries_conf_alias(node: ImageNode, world: World) -> None:
    node.insecure(world.host, extra=(
        'unqualified-search-registries = ["quay.io", "docker.io"]\n'
        f'[aliases]\n"shorty" = "{world.host}/single"\n'))
    assert node.pull("shorty:1") == world.single.id
    assert node.status("shorty:1").image.repo_tags == [f"{world.host}/single:1"]
    with pytest.raises(InvalidArgument, match="ambiguous"):
        node.pull("unaliased")
