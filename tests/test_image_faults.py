"""Faults: corrupt blobs, cut and failing connections, stalls, mirrors,
unreachable and blocked registries.

The real docker-registry serves the images; a FaultProxy in front of it
(tests/registry.py) produces what the real one cannot: wrong bytes, a
connection cut mid-blob, 503s, a stall mid-blob.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import imagebuild as build
import pytest
from registry import FaultProxy, Faults, ImageNode, Registry, free_port, start_registry

from podvisor.proto.errors import Cancelled, FailedPrecondition, Unavailable
from podvisor.workers.image.errors import DataLoss

# Big enough that a stalled or cut transfer is really mid-blob.
BIG = 2_000_000


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Registry, build.Image]]:
    base = Path(tempfile.mkdtemp(prefix="pv-faults-"))
    registry = start_registry(base / "registry")
    try:
        image = build.build_image([build.busybox_layer(), build.random_layer(BIG)])
        build.Pusher(registry.host).push_image("app", "1", image)
        yield registry, image
    finally:
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def proxy(upstream: tuple[Registry, build.Image]) -> Iterator[FaultProxy]:
    p = FaultProxy(upstream[0])
    yield p
    p.stop()


@pytest.fixture
def image(upstream: tuple[Registry, build.Image]) -> build.Image:
    return upstream[1]


def big_layer(image: build.Image) -> str:
    return max(image.layers, key=lambda b: len(b.data)).digest


def assert_store_empty(node: ImageNode) -> None:
    assert node.blobs == []
    assert node.partial_files == []
    assert node.list() == []


def test_corrupt_blob_fails_the_pull_and_leaves_nothing(tmp_path: Path, proxy: FaultProxy,
                                                        image: build.Image) -> None:
    node = ImageNode(tmp_path / "node")
    node.insecure(proxy.host)
    proxy.faults = Faults(corrupt={big_layer(image)})
    with pytest.raises(DataLoss) as info:
        node.pull(f"{proxy.host}/app:1")
    assert f"blob {big_layer(image)}" in info.value.message
    assert "is corrupt" in info.value.message
    assert_store_empty(node)


def test_corrupt_config_fails_the_pull_and_leaves_nothing(tmp_path: Path, proxy: FaultProxy,
                                                          image: build.Image) -> None:
    node = ImageNode(tmp_path / "node")
    node.insecure(proxy.host)
    proxy.faults = Faults(corrupt={image.config.digest})
    with pytest.raises(DataLoss, match="is corrupt"):
        node.pull(f"{proxy.host}/app:1")
    assert_store_empty(node)


def test_a_cut_connection_resumes_with_a_range_request(tmp_path: Path, proxy: FaultProxy,
                                                       image: build.Image) -> None:
    node = ImageNode(tmp_path / "node")
    node.insecure(proxy.host)
    digest = big_layer(image)
    proxy.faults = Faults(cut_once={digest})
    assert node.pull(f"{proxy.host}/app:1") == image.id
    ranges = [entry[2] for entry in proxy.blob_requests(digest)]
    layer = next(b for b in image.layers if b.digest == digest)
    assert ranges[0] == ""
    assert ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert 0 < int(ranges[1][6:-1]) <= len(layer.data) // 2
    assert digest in node.blobs


def test_5xx_answers_are_retried(tmp_path: Path, proxy: FaultProxy,
                                 image: build.Image) -> None:
    node = ImageNode(tmp_path / "node")
    node.insecure(proxy.host)
    proxy.faults = Faults(unavailable=2)
    assert node.pull(f"{proxy.host}/app:1") == image.id
    assert proxy.faults.unavailable == 0


def test_retry_after_is_waited_for(tmp_path: Path, proxy: FaultProxy,
                                   image: build.Image) -> None:
    node = ImageNode(tmp_path / "node", image={"max_parallel_downloads": 1})
    node.insecure(proxy.host)
    # Without the header the first retry goes at once (urllib3's backoff
    # starts at 0); with it, not before the registry said.
    proxy.faults = Faults(unavailable=1, retry_after="1")
    assert node.pull(f"{proxy.host}/app:1") == image.id
    blob_times = [t for (_, path, _), t in zip(proxy.log, proxy.times, strict=True)
                  if "/blobs/" in path]
    assert blob_times[1] - blob_times[0] >= 1.0


def test_a_stalled_registry_is_cancelled_after_the_progress_timeout(
        tmp_path: Path, proxy: FaultProxy, image: build.Image) -> None:
    node = ImageNode(tmp_path / "node", image={"pull_progress_timeout": 1.0})
    node.insecure(proxy.host)
    proxy.faults = Faults(stall={big_layer(image)})
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        node.pull(f"{proxy.host}/app:1")
    elapsed = time.monotonic() - started
    assert proxy.stalled.is_set()
    assert "no progress for" in info.value.message
    assert "pull_progress_timeout is 1s" in info.value.message
    assert elapsed < 10, elapsed
    assert_store_empty(node)


def test_a_stalled_mirror_gives_way_to_the_upstream(tmp_path: Path, proxy: FaultProxy,
                                                    upstream: tuple[Registry, build.Image],
                                                    image: build.Image) -> None:
    registry = upstream[0]
    node = ImageNode(tmp_path / "node", image={"pull_progress_timeout": 1.0})
    node.registries_conf(f"""
[[registry]]
location = "{registry.host}"
insecure = true
[[registry.mirror]]
location = "{proxy.host}"
insecure = true
""")
    proxy.faults = Faults(stall={big_layer(image)})
    assert node.pull(f"{registry.host}/app:1") == image.id
    assert proxy.stalled.is_set()
    [listed] = node.list()
    assert listed.repo_tags == [f"{registry.host}/app:1"]


def test_cancelling_the_request_stops_a_stalled_pull(tmp_path: Path, proxy: FaultProxy,
                                                     image: build.Image) -> None:
    node = ImageNode(tmp_path / "node", image={"pull_progress_timeout": 0})
    node.insecure(proxy.host)
    proxy.faults = Faults(stall={big_layer(image)})
    ctx = node.context("image.pull_image")
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            node.pull(f"{proxy.host}/app:1", ctx=ctx)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=pull)
    thread.start()
    assert proxy.stalled.wait(30)
    ctx.cancelled.set()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    assert_store_empty(node)


def test_mirror_serves_an_image_whose_registry_is_unreachable(
        tmp_path: Path, upstream: tuple[Registry, build.Image], image: build.Image) -> None:
    registry = upstream[0]
    unreachable = f"127.0.0.1:{free_port()}"
    node = ImageNode(tmp_path / "node")
    node.registries_conf(f"""
[[registry]]
location = "{unreachable}"
insecure = true
[[registry.mirror]]
location = "{registry.host}"
insecure = true
""")
    name = f"{unreachable}/app:1"
    assert node.pull(name) == image.id
    status = node.status(name).image
    assert status.repo_tags == [name]
    assert status.repo_digests == [f"{unreachable}/app@{image.manifest.digest}"]


def test_unreachable_registry_without_mirror_fails_fast(tmp_path: Path) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    node = ImageNode(tmp_path / "node")
    node.insecure(unreachable)
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        node.pull(f"{unreachable}/app:1")
    assert f"cannot reach registry {unreachable}" in info.value.message
    assert time.monotonic() - started < 5


def test_every_source_failing_reports_each_of_them(tmp_path: Path) -> None:
    primary, mirror = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    node = ImageNode(tmp_path / "node")
    node.registries_conf(f"""
[[registry]]
location = "{primary}"
insecure = true
[[registry.mirror]]
location = "{mirror}"
insecure = true
""")
    with pytest.raises(Unavailable) as info:
        node.pull(f"{primary}/app:1")
    assert f"mirror {mirror}:" in info.value.message
    assert f"{primary}: cannot reach" in info.value.message


def test_blocked_registry_is_refused(tmp_path: Path, upstream: tuple[Registry, build.Image],
                                     proxy: FaultProxy) -> None:
    registry = upstream[0]
    node = ImageNode(tmp_path / "node")
    node.registries_conf(f"""
[[registry]]
location = "{registry.host}"
blocked = true
[[registry.mirror]]
location = "{proxy.host}"
insecure = true
""")
    with pytest.raises(FailedPrecondition) as info:
        node.pull(f"{registry.host}/app:1")
    assert f"registry {registry.host} is blocked" in info.value.message
    assert proxy.log == []


def test_digest_only_mirror_is_skipped_for_tags(tmp_path: Path, proxy: FaultProxy,
                                                upstream: tuple[Registry, build.Image],
                                                image: build.Image) -> None:
    registry = upstream[0]
    node = ImageNode(tmp_path / "node")
    node.registries_conf(f"""
[[registry]]
location = "{registry.host}"
insecure = true
[[registry.mirror]]
location = "{proxy.host}"
insecure = true
pull-from-mirror = "digest-only"
""")
    node.pull(f"{registry.host}/app:1")
    assert proxy.log == []
    node.remove(image.id)
    node.pull(f"{registry.host}/app@{image.manifest.digest}")
    assert proxy.blob_requests(big_layer(image))


def test_connections_are_kept_alive_and_reused(tmp_path: Path, proxy: FaultProxy,
                                               image: build.Image) -> None:
    node = ImageNode(tmp_path / "node", image={"max_parallel_downloads": 1})
    node.insecure(proxy.host)
    assert node.pull(f"{proxy.host}/app:1") == image.id
    # ping, manifest, config and two layers over as few connections as the
    # insecure https probe and one kept-alive connection allow.
    assert len(proxy.log) >= 5
    assert proxy.connections <= 2, (proxy.connections, proxy.log)


def test_blob_redirects_are_followed(tmp_path: Path, proxy: FaultProxy,
                                     upstream: tuple[Registry, build.Image],
                                     image: build.Image) -> None:
    node = ImageNode(tmp_path / "node")
    node.insecure(proxy.host)
    proxy.faults = Faults(redirect=True)
    assert node.pull(f"{proxy.host}/app:1") == image.id
    assert proxy.blob_requests(big_layer(image))
    assert big_layer(image) in node.blobs


def test_pulls_in_two_processes_download_each_blob_once(
        tmp_path: Path, proxy: FaultProxy, image: build.Image) -> None:
    node = ImageNode(tmp_path / "node")
    node.insecure(proxy.host)
    script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from registry import ImageNode
from pathlib import Path
node = ImageNode(Path({str(node.base)!r}))
print(node.pull({f"{proxy.host}/app:1"!r}), flush=True)
"""
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
             for _ in range(3)]
    outputs = [proc.communicate(timeout=60)[0].decode().strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0]
    assert outputs == [image.id] * 3
    for blob in image.layers:
        assert len(proxy.blob_requests(blob.digest)) == 1
    assert len(node.list()) == 1
