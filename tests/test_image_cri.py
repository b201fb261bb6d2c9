"""The CRI ImageService end to end, through the podvisor socket.

Everything here is a gRPC call on the generated stubs to a real podvisor
daemon (tests/daemonlib.py), which routes it over the bus to its image (and
storage) pool. The images come from Debian's real docker-registry on
127.0.0.1, filled with images built from static busybox
(tests/imagebuild.py); a second, htpasswd-protected docker-registry serves
the auth tests. A FaultProxy (tests/registry.py) stands in front of the
registry only for what the real one cannot do: serve a corrupt blob, stall
mid-blob.

One daemon serves the whole module, configured once: a registries.conf
written here (the registries insecure, a mirror for an unreachable port, a
blocked prefix), an insecureAcceptAnything policy.json, and
``pull_progress_timeout = 2`` for the stall test. Every test leaves the
store empty (``empty_store`` removes what it pulled and checks that ListImages
and the blob store are empty), so no test sees another's images.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import imagebuild as build
import pytest
from daemonlib import Daemon, poll_until, write_config
from registry import FaultProxy, Faults, Registry, free_port, start_registry

from podvisor.proto import api_pb2 as api
from podvisor.workers.image.manifest import this_platform

pytestmark = pytest.mark.slow

ARCH = this_platform().architecture
OTHER_ARCH = "arm64" if ARCH != "arm64" else "amd64"
USERS = {"alice": "wonderland"}
STALL_TIMEOUT = 2.0
# Big enough that a stalled or corrupted transfer is really mid-blob.
BIG = 2_000_000
# Deadline of each call made while a pull stalls: "a few seconds".
CALL_DEADLINE = 5.0
PULL_DEADLINE = 60.0


@dataclass(frozen=True)
class Kind:
    """One kind of image in the registry, and what ImageStatus must say of it."""

    repo: str
    image: build.Image
    # What was pulled (the index when there is one), then the platform manifest.
    digests: tuple[str, ...]
    uid: int | None
    username: str


@dataclass
class World:
    base: Path
    registry: Registry
    basic: Registry
    corrupt: FaultProxy
    stall: FaultProxy
    unreachable: str
    kinds: dict[str, Kind]
    app: build.Image  # busybox + a BIG random layer, for the faults
    daemon: Daemon

    @property
    def host(self) -> str:
        return self.registry.host


def registries_conf(world_hosts: dict[str, str]) -> str:
    """Plain HTTP to every test registry, a mirror for the unreachable one,
    and a blocked prefix on the main one."""
    host = world_hosts["registry"]
    tables = "".join(f'[[registry]]\nlocation = "{world_hosts[name]}"\ninsecure = true\n\n'
                     for name in ("registry", "basic", "corrupt", "stall"))
    return (tables
            + f'[[registry]]\nlocation = "{host}/blocked"\nblocked = true\n\n'
            + f'[[registry]]\nlocation = "{world_hosts["unreachable"]}"\ninsecure = true\n'
            + f'[[registry.mirror]]\nlocation = "{host}"\ninsecure = true\n')


def build_kinds(host: str) -> dict[str, Kind]:
    busybox = build.busybox_layer()
    single = build.build_image([busybox], user="1000:1000")
    multi = build.build_image([
        busybox,
        (build.Layer().dir("etc").file("etc/motd", b"hello\n"), "gzip"),
        # The whiteout layer removes what the first layer put there.
        (build.Layer().dir("etc").whiteout("etc/hostname"), "none"),
        (build.random_layer(300_000), "gzip"),
    ], user="nobody")
    here = build.build_image([busybox], labels={"arch": ARCH})
    there = build.build_image([build.Layer().file("other", b"arch")], arch=OTHER_ARCH,
                              labels={"arch": OTHER_ARCH})
    index = build.build_index([(there, OTHER_ARCH, ""), (here, ARCH, "")])
    docker = build.build_image([busybox, build.Layer().file("docker", b"d")], docker=True,
                               user="0")
    zstd = build.build_image([(busybox, "zstd")], user="daemon:daemon")
    pusher = build.Pusher(host)
    pusher.push_image("single", "1", single)
    pusher.push_image("single", "also", single)
    pusher.push_image("multi", "1", multi)
    pusher.push_index("multiarch", "1", index)
    pusher.push_image("docker", "1", docker)
    pusher.push_image("zstd", "1", zstd)
    return {
        "single": Kind("single", single, (single.manifest.digest,), 1000, ""),
        "multi": Kind("multi", multi, (multi.manifest.digest,), None, "nobody"),
        "multiarch": Kind("multiarch", here, (index.index.digest, here.manifest.digest),
                          None, ""),
        "docker": Kind("docker", docker, (docker.manifest.digest,), 0, ""),
        "zstd": Kind("zstd", zstd, (zstd.manifest.digest,), None, "daemon"),
    }


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="pv-icri-"))
    stops: list[Callable[[], Any]] = []
    try:
        registry = start_registry(base / "registry")
        stops.append(registry.stop)
        kinds = build_kinds(registry.host)
        app = build.build_image([build.busybox_layer(), build.random_layer(BIG)])
        build.Pusher(registry.host).push_image("app", "1", app)
        build.Pusher(registry.host).push_image("blocked/app", "1", app)
        basic = start_registry(base / "basic", users=USERS)
        stops.append(basic.stop)
        build.Pusher(basic.host, username="alice", password="wonderland").push_image(
            "private/app", "1", kinds["single"].image)
        big = max(app.layers, key=lambda b: len(b.data)).digest
        corrupt = FaultProxy(registry, Faults(corrupt={big}))
        stops.append(corrupt.stop)
        stall = FaultProxy(registry, Faults(stall={big}))
        stops.append(stall.stop)
        unreachable = f"127.0.0.1:{free_port()}"
        conf = base / "registries.conf"
        conf.write_text(registries_conf({
            "registry": registry.host, "basic": basic.host, "corrupt": corrupt.host,
            "stall": stall.host, "unreachable": unreachable}))
        policy = base / "policy.json"
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        dbase = base / "d"
        dbase.mkdir()
        write_config(dbase, extra=(
            "[podvisor.image]\n"
            f'registries_conf = "{conf}"\n'
            f'signature_policy = "{policy}"\n'
            f"pull_progress_timeout = {STALL_TIMEOUT}\n"))
        daemon = Daemon(dbase, dict(os.environ))
        stops.append(daemon.stop)
        daemon.start()
        yield World(base, registry, basic, corrupt, stall, unreachable, kinds, app, daemon)
    finally:
        for stop in reversed(stops):
            stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def daemon(world: World) -> Daemon:
    """This module's daemon (it overrides conftest's plain one)."""
    return world.daemon


def stored_blobs(daemon: Daemon) -> list[str]:
    """Every blob in the image pool's content store, as digests."""
    top = daemon.base / "root" / "image" / "blobs"
    if not top.exists():
        return []
    return sorted(f"{alg.name}:{f.name}" for alg in top.iterdir() for f in alg.iterdir())


@pytest.fixture(autouse=True)
def empty_store(world: World) -> Iterator[None]:
    """Each test starts and ends with no image: what it pulled is removed
    (through RemoveImage), and nothing may be left in the blob store."""
    daemon = world.daemon
    assert list_ids(daemon) == []
    yield
    for image_id in list_ids(daemon):
        daemon.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=image_id)),
                                  timeout=CALL_DEADLINE)
    assert list_ids(daemon) == []
    assert stored_blobs(daemon) == []


# ---- helpers -----------------------------------------------------------------


def pull(daemon: Daemon, name: str, auth: api.AuthConfig | None = None) -> str:
    request = api.PullImageRequest(image=api.ImageSpec(image=name), auth=auth)
    ref: str = daemon.images.PullImage(request, timeout=PULL_DEADLINE).image_ref
    return ref


def pull_error(daemon: Daemon, name: str,
               auth: api.AuthConfig | None = None) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        pull(daemon, name, auth)
    return info.value.code(), info.value.details()


def status(daemon: Daemon, name: str, verbose: bool = False) -> api.ImageStatusResponse:
    request = api.ImageStatusRequest(image=api.ImageSpec(image=name), verbose=verbose)
    response: api.ImageStatusResponse = daemon.images.ImageStatus(request,
                                                                  timeout=CALL_DEADLINE)
    return response


def listed(daemon: Daemon, name: str = "") -> list[api.Image]:
    flt = api.ImageFilter(image=api.ImageSpec(image=name)) if name else None
    response = daemon.images.ListImages(api.ListImagesRequest(filter=flt),
                                        timeout=CALL_DEADLINE)
    return list(response.images)


def list_ids(daemon: Daemon, name: str = "") -> list[str]:
    return [image.id for image in listed(daemon, name)]


def remove(daemon: Daemon, name: str) -> None:
    daemon.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=name)),
                              timeout=CALL_DEADLINE)


def parallel(calls: list[Callable[[], Any]], workers: int = 8) -> list[Any]:
    """Run ``calls`` at once; their results, or the exceptions they raised."""
    def guarded(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:
            return exc

    with futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(guarded, calls))


# ---- pulls of each kind, and what the other RPCs say of them -----------------


@pytest.mark.parametrize("kind", ["single", "multi", "multiarch", "docker", "zstd"])
def test_pull_list_status_remove_each_kind(world: World, daemon: Daemon, kind: str) -> None:
    k = world.kinds[kind]
    repo = f"{world.host}/{k.repo}"
    tag = f"{repo}:1"
    image_id = pull(daemon, tag)
    assert image_id == k.image.id

    [image] = listed(daemon)
    assert image.id == image_id
    assert list_ids(daemon, tag) == [image_id]
    assert list_ids(daemon, f"{world.host}/{k.repo}:absent") == []

    hex_id = image_id.removeprefix("sha256:")
    names = [tag, *(f"{repo}@{d}" for d in k.digests), image_id, hex_id, hex_id[:12]]
    for name in names:
        response = status(daemon, name)
        assert response.HasField("image"), name
        got = response.image
        assert got.id == image_id, name
        assert list(got.repo_tags) == [tag], name
        assert list(got.repo_digests) == [f"{repo}@{d}" for d in k.digests], name
        assert got.size > 0 and got.size == image.size, name
        assert got.spec.image == image_id, name
        assert got.HasField("uid") == (k.uid is not None), name
        if k.uid is not None:
            assert got.uid.value == k.uid, name
        assert got.username == k.username, name
        assert not got.pinned
        assert dict(response.info) == {}, name

    info = json.loads(status(daemon, tag, verbose=True).info["info"])
    config = json.loads(k.image.config.data)
    assert info["id"] == image_id
    assert info["manifestDigest"] == k.image.manifest.digest
    assert info["imageSpec"] == config
    assert [layer["digest"] for layer in info["layers"]] == [b.digest for b in k.image.layers]
    assert [layer["diffID"] for layer in info["layers"]] == list(k.image.diff_ids)
    # What the storage pool will unpack, as pushed: gzip, zstd, an
    # uncompressed whiteout layer, Docker's own layer type.
    assert [layer["mediaType"] for layer in info["layers"]] == [
        b.media_type for b in k.image.layers]

    remove(daemon, image_id)
    assert listed(daemon) == []
    assert not status(daemon, tag).HasField("image")


def test_absent_image_is_an_empty_status_not_an_error(world: World, daemon: Daemon) -> None:
    for name in (f"{world.host}/single:1", world.kinds["single"].image.id, "0" * 64,
                 "busybox", f"{world.host}/single@{world.kinds['single'].image.manifest.digest}"):
        response = status(daemon, name, verbose=True)
        assert not response.HasField("image"), name
        assert dict(response.info) == {}, name
    assert listed(daemon, f"{world.host}/single:1") == []


def test_two_tags_of_one_image_are_one_image(world: World, daemon: Daemon) -> None:
    first = pull(daemon, f"{world.host}/single:1")
    assert pull(daemon, f"{world.host}/single:also") == first
    [image] = listed(daemon)
    assert sorted(image.repo_tags) == [f"{world.host}/single:1", f"{world.host}/single:also"]


def test_pulls_of_one_image_at_once_all_succeed(world: World, daemon: Daemon) -> None:
    tag = f"{world.host}/multi:1"
    results = parallel([lambda: pull(daemon, tag)] * 6)
    assert results == [world.kinds["multi"].image.id] * 6
    assert len(listed(daemon)) == 1


# ---- RemoveImage -------------------------------------------------------------


def test_remove_by_tag_drops_that_tag_then_the_image(world: World, daemon: Daemon) -> None:
    image_id = pull(daemon, f"{world.host}/single:1")
    pull(daemon, f"{world.host}/single:also")
    remove(daemon, f"{world.host}/single:also")
    assert list(status(daemon, image_id).image.repo_tags) == [f"{world.host}/single:1"]
    remove(daemon, f"{world.host}/single:1")  # the last tag takes the image with it
    assert listed(daemon) == []
    remove(daemon, f"{world.host}/single:1")  # idempotent
    assert stored_blobs(daemon) == []


def test_remove_by_id_drops_every_tag(world: World, daemon: Daemon) -> None:
    image_id = pull(daemon, f"{world.host}/single:1")
    pull(daemon, f"{world.host}/single:also")
    remove(daemon, image_id)
    assert listed(daemon) == []
    for name in (f"{world.host}/single:1", f"{world.host}/single:also", image_id):
        assert not status(daemon, name).HasField("image"), name
    remove(daemon, image_id)  # idempotent
    assert stored_blobs(daemon) == []


def test_remove_by_digest(world: World, daemon: Daemon) -> None:
    k = world.kinds["multiarch"]
    repo = f"{world.host}/multiarch"
    for digest in k.digests:  # by the index digest, then by the platform's
        pull(daemon, f"{repo}:1")
        remove(daemon, f"{repo}@{digest}")
        assert listed(daemon) == [], digest
        remove(daemon, f"{repo}@{digest}")  # idempotent
    assert stored_blobs(daemon) == []


def test_concurrent_removals_never_fail(world: World, daemon: Daemon) -> None:
    k = world.kinds["multi"]
    tag = f"{world.host}/multi:1"
    image_id = pull(daemon, tag)
    names = [image_id, tag, f"{world.host}/multi@{k.image.manifest.digest}",
             image_id.removeprefix("sha256:")[:12]] * 4
    results = parallel([functools.partial(remove, daemon, name) for name in names])
    assert [r for r in results if isinstance(r, Exception)] == []
    assert listed(daemon) == []
    assert stored_blobs(daemon) == []


# ---- auth --------------------------------------------------------------------


def test_basic_auth_through_pull_image_request(world: World, daemon: Daemon) -> None:
    name = f"{world.basic.host}/private/app:1"
    code, message = pull_error(daemon, name)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert f"registry {world.basic.host} requires a username and password" in message

    code, message = pull_error(daemon, name, api.AuthConfig(username="alice",
                                                            password="looking-glass"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert f"registry {world.basic.host} rejected the credentials of user 'alice'" in message
    assert "looking-glass" not in message
    assert listed(daemon) == []

    image_id = pull(daemon, name, api.AuthConfig(username="alice", password="wonderland",
                                                 server_address=world.basic.host))
    assert image_id == world.kinds["single"].image.id
    assert list(status(daemon, name).image.repo_tags) == [name]
    remove(daemon, image_id)
    # The docker-config "auth" form: base64 of user:password.
    encoded = base64.b64encode(b"alice:wonderland").decode()
    assert pull(daemon, name, api.AuthConfig(auth=encoded)) == image_id


# ---- registries.conf ---------------------------------------------------------


def test_mirror_serves_an_image_whose_registry_is_unreachable(world: World,
                                                              daemon: Daemon) -> None:
    name = f"{world.unreachable}/single:1"
    k = world.kinds["single"]
    assert pull(daemon, name) == k.image.id
    image = status(daemon, name).image
    assert list(image.repo_tags) == [name]
    assert list(image.repo_digests) == [f"{world.unreachable}/single@{k.image.manifest.digest}"]


def test_blocked_registry_is_refused(world: World, daemon: Daemon) -> None:
    name = f"{world.host}/blocked/app:1"
    code, message = pull_error(daemon, name)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"registry {world.host}/blocked is blocked" in message
    assert f"refusing to pull {name}" in message
    assert listed(daemon) == []


# ---- faults ------------------------------------------------------------------


def test_corrupt_blob_fails_the_pull_and_lists_nothing(world: World, daemon: Daemon) -> None:
    big = max(world.app.layers, key=lambda b: len(b.data)).digest
    before = list_ids(daemon)
    code, message = pull_error(daemon, f"{world.corrupt.host}/app:1")
    assert code == grpc.StatusCode.DATA_LOSS
    assert f"blob {big}" in message and "is corrupt" in message
    assert list_ids(daemon) == before
    assert stored_blobs(daemon) == []


def test_stalled_registry_blocks_nothing_and_the_pull_times_out(world: World,
                                                                daemon: Daemon) -> None:
    pids = {key: w["pid"] for key, w in daemon.workers().items()}

    def version() -> tuple[float, str]:
        t0 = time.monotonic()
        answer = daemon.runtime.Version(api.VersionRequest(), timeout=CALL_DEADLINE)
        return time.monotonic() - t0, answer.runtime_name

    def list_all() -> tuple[float, int]:
        t0 = time.monotonic()
        answer = daemon.images.ListImages(api.ListImagesRequest(), timeout=CALL_DEADLINE)
        return time.monotonic() - t0, len(answer.images)

    with futures.ThreadPoolExecutor(1) as runner:
        # One image worker (write_config's default): the calls below are
        # served by the very process whose thread hangs on the registry.
        pulling = runner.submit(pull, daemon, f"{world.stall.host}/app:1")
        assert world.stall.stalled.wait(30), "the proxy never reached the stall"
        stalled_at = time.monotonic()
        results = parallel([version, list_all] * 20)
        calls_done_at = time.monotonic()
        # All of them while the pull hung, not after it gave up.
        assert not pulling.done()
        with pytest.raises(grpc.RpcError) as info:
            pulling.result(timeout=PULL_DEADLINE)
        failed_at = time.monotonic()

    assert [r for r in results if isinstance(r, Exception)] == []
    assert [answer for _, answer in results[0::2]] == ["podvisor"] * 20
    assert [answer for _, answer in results[1::2]] == [0] * 20
    # Each well within its own deadline: behaviour, not a benchmark.
    latencies = [latency for latency, _ in results]
    assert max(latencies) < CALL_DEADLINE / 2, latencies

    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    message = info.value.details()
    assert f"pulling {world.stall.host}/app" in message
    assert "no progress for" in message
    assert f"pull_progress_timeout is {STALL_TIMEOUT:g}s" in message
    assert calls_done_at < failed_at
    # Cancelled by the progress timeout, not before it.
    assert failed_at - stalled_at >= STALL_TIMEOUT - 0.5

    # Healthy after: same workers, none still holding the pull, nothing
    # left, and pulls work.
    assert daemon.all_ready()
    # (The runtime pool holds the change feed's long poll while a client subscribes.)
    poll_until(lambda: all(w["inflight"] == 0 for w in daemon.status()["workers"]
                           if w["pool"] == "image"), 10, what="no image request in flight")
    assert {key: w["pid"] for key, w in daemon.workers().items()} == pids
    assert listed(daemon) == []
    assert stored_blobs(daemon) == []
    assert pull(daemon, f"{world.host}/app:1") == world.app.id


# ---- bad input ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "Busybox", "bad::ref", "a b", "host/repo@sha256:12"])
def test_bad_references_are_invalid_arguments(daemon: Daemon, name: str) -> None:
    code, message = pull_error(daemon, name)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert message


def test_pull_without_an_image_spec_is_an_invalid_argument(daemon: Daemon) -> None:
    with pytest.raises(grpc.RpcError) as info:
        daemon.images.PullImage(api.PullImageRequest(), timeout=CALL_DEADLINE)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image.image is required" in info.value.details()


# ---- ImageFsInfo -------------------------------------------------------------


def test_image_fs_info_counts_pulled_images(world: World, daemon: Daemon) -> None:
    def used() -> tuple[int, int, str]:
        try:
            response = daemon.images.ImageFsInfo(api.ImageFsInfoRequest(),
                                                 timeout=CALL_DEADLINE)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                pytest.skip("ImageFsInfo is not implemented by the storage pool yet")
            raise
        [fs] = response.image_filesystems
        return fs.used_bytes.value, fs.inodes_used.value, fs.fs_id.mountpoint

    before_bytes, before_inodes, mountpoint = used()
    assert mountpoint and Path(mountpoint).is_dir()
    k = world.kinds["multi"]
    pull(daemon, f"{world.host}/multi:1")
    after_bytes, after_inodes, _ = used()
    assert after_bytes - before_bytes >= sum(len(b.data) for b in k.image.layers)
    assert after_inodes > before_inodes

