"""Container root filesystems (storage.create_rootfs, remove_rootfs),
ImageFsInfo and start-up reconcile, on real overlay mounts.
Every test unmounts what it mounted; the ``storage`` fixture fails a test
that leaves a mount behind."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from layers import LayerTar, Storage, mounts_under, storage_in

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from podvisor.workers import locks, userns
from podvisor.workers.storage import overlay
from podvisor.workers.storage.layer_usage import Measurer, MeasureSettings


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    yield from storage_in(tmp_path)


def base_layer() -> LayerTar:
    return (LayerTar()
            .dir("etc").file("etc/passwd", b"root:x:0:0\n").file("etc/group", b"root:x:0:\n")
            .dir("cache").file("cache/old1", b"1").dir("cache/sub").file("cache/sub/old2", b"2")
            .file("bin/tool", b"v1", mode=0o755).dir("gone").file("gone/inside", b"g"))


def top_layer() -> LayerTar:
    return (LayerTar()
            .whiteout("etc/passwd").opaque("cache").file("cache/new", b"n")
            .file("bin/tool", b"v2", mode=0o755).whiteout("gone"))


def test_rootfs_is_the_layers_seen_through_overlay(storage: Storage) -> None:
    chain = storage.stack(base_layer(), top_layer())
    result = storage.call("create_rootfs", {"container_id": "c1", "layers": chain})
    root = Path(result["path"])
    assert result == {"container_id": "c1", "path": str(storage.runroot /
                      "storage/mounts/c1"), "upper_dir": str(storage.root /
                      "storage/containers/c1/upper"), "layers": chain, "mount_label": None,
                      "created": True}
    assert overlay.mounted(str(root))
    # The whiteout hides the lower file, the opaque dir the lower contents.
    assert not (root / "etc/passwd").exists()
    assert (root / "etc/group").read_bytes() == b"root:x:0:\n"
    assert sorted(os.listdir(root / "cache")) == ["new"]
    assert not (root / "gone").exists()
    assert (root / "bin/tool").read_bytes() == b"v2"
    # Writes land in the container's upper dir, never in a layer.
    (root / "etc/written").write_bytes(b"w")
    assert (Path(result["upper_dir"]) / "etc/written").read_bytes() == b"w"
    assert not (Path(storage.unpack(base_layer())["path"]) / "etc/written").exists()

    assert storage.call("remove_rootfs", {"container_id": "c1"}) == {
        "container_id": "c1", "removed": True}
    assert not overlay.mounted(str(root)) and not root.exists()
    assert os.listdir(storage.root / "storage/containers") == []
    # CRI: removing what is gone succeeds.
    assert storage.call("remove_rootfs", {"container_id": "c1"})["removed"] is False


def test_create_rootfs_twice_returns_the_same_mount(storage: Storage) -> None:
    chain = storage.stack(base_layer())
    first = storage.call("create_rootfs", {"container_id": "c2", "layers": chain})
    Path(first["path"], "state").write_bytes(b"kept")
    again = storage.call("create_rootfs", {"container_id": "c2", "layers": chain})
    assert again == {**first, "created": False}
    assert mounts_under(storage.runroot) == [first["path"]]  # not mounted twice
    assert Path(again["path"], "state").read_bytes() == b"kept"
    other = storage.stack(base_layer(), top_layer())
    with pytest.raises(AlreadyExists, match="other layers"):
        storage.call("create_rootfs", {"container_id": "c2", "layers": other})
    storage.call("remove_rootfs", {"container_id": "c2"})


def test_missing_layer_is_not_found_and_leaves_nothing(storage: Storage) -> None:
    chain = storage.stack(base_layer())
    absent = "sha256:" + "ab" * 32
    with pytest.raises(NotFound, match=absent):
        storage.call("create_rootfs", {"container_id": "c3", "layers": [*chain, absent]})
    assert not (storage.root / "storage/containers/c3").exists()
    assert mounts_under(storage.base) == []


@pytest.mark.parametrize(("args", "message"), [
    ({"container_id": "../x", "layers": []}, "container_id"),
    # Types are the contract's (msgspec names the field), values the pool's.
    ({"container_id": "c", "layers": "sha256:00"}, r"Expected `array`.*`\$\.layers`"),
    ({"container_id": "c", "layers": ["sha256:" + "0" * 64] * 2}, "twice"),
    ({"container_id": "c", "layers": [], "mount_label": 3}, r"`\$\.mount_label`"),
    ({"container_id": "c"}, "missing required field `layers`"),
])
def test_create_rootfs_checks_its_arguments(storage: Storage, args: dict[str, object],
                                            message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        storage.call("create_rootfs", args)


def test_a_layer_in_use_is_not_removed(storage: Storage) -> None:
    chain = storage.stack(base_layer(), top_layer())
    storage.call("create_rootfs", {"container_id": "user-1", "layers": chain})
    with pytest.raises(FailedPrecondition, match="user-1"):
        storage.call("remove_layer", {"chain_id": chain[0]})
    storage.call("remove_rootfs", {"container_id": "user-1"})
    for chain_id in reversed(chain):
        assert storage.call("remove_layer", {"chain_id": chain_id})["removed"] is True
    assert storage.layer_entries() == []


def test_create_rootfs_again_brings_back_a_lost_mount(storage: Storage) -> None:
    chain = storage.stack(base_layer())
    created = storage.call("create_rootfs", {"container_id": "c4", "layers": chain})
    Path(created["path"], "written").write_bytes(b"before reboot")
    # What a reboot does to the volatile runroot's mounts.
    assert overlay.unmount(created["path"])
    again = storage.call("create_rootfs", {"container_id": "c4", "layers": chain})
    assert again == {**created, "created": False}
    assert overlay.mounted(again["path"])
    assert Path(again["path"], "written").read_bytes() == b"before reboot"
    storage.call("remove_rootfs", {"container_id": "c4"})


def test_an_image_of_no_layers_gets_an_empty_rootfs(storage: Storage) -> None:
    result = storage.call("create_rootfs", {"container_id": "scratch", "layers": []})
    assert os.listdir(result["path"]) == []
    storage.call("remove_rootfs", {"container_id": "scratch"})


def test_a_mount_label_without_selinux_is_ignored(storage: Storage) -> None:
    if overlay.selinux_enabled():
        pytest.skip("SELinux is enabled: the label would be applied")
    chain = storage.stack(base_layer())
    result = storage.call("create_rootfs", {
        "container_id": "lbl", "layers": chain,
        "mount_label": "system_u:object_r:container_file_t:s0:c1,c2"})
    assert result["mount_label"] == "system_u:object_r:container_file_t:s0:c1,c2"
    assert overlay.mounted(result["path"])
    storage.call("remove_rootfs", {"container_id": "lbl"})


def many_layers(storage: Storage, n: int) -> list[str]:
    return storage.stack(*(LayerTar().file(f"layer{i}", b"x").file("top", str(i).encode())
                           for i in range(n)))


def test_many_layers_mount(storage: Storage) -> None:
    if not overlay.has_lowerdir_append():
        pytest.skip("this kernel has no lowerdir+ (Linux < 6.8): see the legacy test")
    chain = many_layers(storage, 150)
    result = storage.call("create_rootfs", {"container_id": "tall", "layers": chain})
    root = Path(result["path"])
    assert (root / "top").read_bytes() == b"149"
    assert (root / "layer0").exists() and (root / "layer149").exists()
    storage.call("remove_rootfs", {"container_id": "tall"})


def test_legacy_mount_works_and_names_its_limit(storage: Storage, tmp_path: Path) -> None:
    chain = many_layers(storage, 3)
    # The short links the pool itself mounts with, top layer first.
    lowers = [str(storage.root / "storage/l" / json.loads(
        (storage.layers_dir / c[7:] / "layer.json").read_text())["link"])
        for c in reversed(chain)]
    upper, work, target = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, target):
        d.mkdir()
    overlay.mount_legacy(str(target), lowers, str(upper), str(work))
    try:
        assert (target / "top").read_bytes() == b"2"
    finally:
        assert overlay.unmount(str(target))
    with pytest.raises(FailedPrecondition, match=r"150 layers.*holds about") as err:
        overlay.mount_legacy(str(target), lowers * 50, str(upper), str(work))
    assert "Linux 6.8" in str(err.value)


def fs_info(storage: Storage) -> api.ImageFsInfoResponse:
    """The CRI response the pool serializes, parsed as the supervisor does."""
    return api.ImageFsInfoResponse.FromString(storage.call("image_fs_info", {})["response"])


def test_image_fs_info_moves_with_layers_and_containers(storage: Storage) -> None:
    def used() -> tuple[int, int, int, int]:
        info = fs_info(storage)
        image, = info.image_filesystems
        cont, = info.container_filesystems
        assert image.fs_id.mountpoint == str(storage.layers_dir)
        assert cont.fs_id.mountpoint == str(storage.root / "storage/containers")
        assert image.timestamp > 0
        return (image.used_bytes.value, image.inodes_used.value,
                cont.used_bytes.value, cont.inodes_used.value)

    empty = used()
    storage.unpack(LayerTar().file("big", os.urandom(256 * 1024)).file("b").file("c"))
    with_layer = used()
    assert with_layer[0] >= empty[0] + 256 * 1024
    assert with_layer[1] >= empty[1] + 4  # three files and the diff dir
    assert with_layer[2:] == empty[2:]
    # Blobs in the image pool's store count as image filesystem.
    blobs = storage.root / "image/blobs/sha256"
    blobs.mkdir(parents=True)
    (blobs / ("0" * 64)).write_bytes(os.urandom(64 * 1024))
    assert used()[0] >= with_layer[0] + 64 * 1024
    chain = storage.stack(LayerTar().file("f"))
    result = storage.call("create_rootfs", {"container_id": "du", "layers": chain})
    before = used()
    Path(result["path"], "grown").write_bytes(os.urandom(128 * 1024))
    # Upper dirs are measured in the background, never on the call.
    assert used() == before
    Measurer(storage.service.layout, MeasureSettings(interval=10, budget=1)).measure("du")
    after = used()
    assert after[2] >= before[2] + 128 * 1024 and after[3] == before[3] + 1
    storage.call("remove_rootfs", {"container_id": "du"})


def test_hard_links_count_once(storage: Storage) -> None:
    storage.unpack(LayerTar().file("a", os.urandom(64 * 1024)))
    one = fs_info(storage).image_filesystems[0]
    storage.unpack(LayerTar().file("a", os.urandom(64 * 1024)).hardlink("b", "a")
                   .hardlink("c", "a"))
    two = fs_info(storage).image_filesystems[0]
    grown = two.used_bytes.value - one.used_bytes.value
    assert 64 * 1024 <= grown < 2 * 64 * 1024


def test_reconcile_cleans_what_a_crash_left(storage: Storage) -> None:
    keep = storage.stack(base_layer())
    orphan_layer = storage.unpack(LayerTar().file("orphan"))["chain_id"]
    storage.call("create_rootfs", {"container_id": "live", "layers": keep})
    dead = storage.call("create_rootfs", {"container_id": "dead", "layers": keep})
    # What kill -9 mid-unpack and mid-create leave behind.
    crashed = storage.layers_dir / f".tmp-{'cd' * 32}-0badf00d"
    (crashed / "diff").mkdir(parents=True)
    (storage.root / "storage/l/DANGLINGLINK").symlink_to(f"../layers/{'cd' * 32}/diff")
    half = storage.root / "storage/containers/.tmp-half-0badf00d"
    (half / "upper").mkdir(parents=True)
    # An unpack still running in another worker: its temp dir stays.
    running = storage.layers_dir / f".tmp-{'ef' * 32}-1234abcd"
    running.mkdir()
    # A mount point whose record removal was cut short.
    (storage.runroot / "storage/mounts/ghost").mkdir()
    lock = locks.try_acquire(str(storage.runroot / "storage/locks"), f"layer-{'ef' * 32}")
    assert lock is not None
    try:
        report = storage.call("reconcile", {"live_containers": ["live"],
                                            "live_layers": keep})
    finally:
        lock.release()
    assert sorted(report["removed_temp"]) == sorted([crashed.name, half.name])
    assert report["removed_links"] == ["DANGLINGLINK"]
    assert report["removed_containers"] == ["dead", "ghost"]
    assert report["removed_layers"] == [orphan_layer]
    assert report["busy"] == [running.name]
    assert running.exists() and not crashed.exists() and not half.exists()
    assert not overlay.mounted(dead["path"])
    assert os.listdir(storage.root / "storage/containers") == ["live"]
    assert os.listdir(storage.runroot / "storage/mounts") == ["live"]
    assert overlay.mounted(str(storage.runroot / "storage/mounts/live"))
    # Without live_layers, layers are left alone; a second pass has nothing to do.
    report = storage.call("reconcile", {"live_containers": ["live"]})
    assert report == {"removed_temp": [running.name], "removed_links": [],
                      "removed_containers": [], "removed_layers": [], "busy": []}
    storage.call("remove_rootfs", {"container_id": "live"})


def test_reconcile_keeps_a_layer_a_live_container_uses(storage: Storage) -> None:
    chain = storage.stack(base_layer())
    storage.call("create_rootfs", {"container_id": "old-image", "layers": chain})
    report = storage.call("reconcile", {"live_containers": ["old-image"], "live_layers": []})
    assert report["removed_layers"] == []
    assert stat.S_ISDIR(os.lstat(storage.layers_dir / chain[0][7:]).st_mode)
    storage.call("remove_rootfs", {"container_id": "old-image"})


IDMAP = {"uids": [{"container_id": 0, "host_id": 100000, "length": 65536}],
         "gids": [{"container_id": 0, "host_id": 100000, "length": 65536}]}


def test_a_rootfs_for_a_user_namespace_shows_its_layers_idmapped(storage: Storage) -> None:
    chain = storage.stack(base_layer(), top_layer())
    created = storage.call("create_rootfs", {"container_id": "u1", "layers": chain,
                                             "idmap": IDMAP})
    root = Path(created["path"])
    # On disk the layers are host root's; through the rootfs, the pod's root's.
    assert os.stat(storage.unpack(base_layer())["path"]).st_uid == 0
    tool = os.stat(root / "bin/tool")
    assert (tool.st_uid, tool.st_gid) == (100000, 100000)
    assert (root / "bin/tool").read_bytes() == b"v2"
    upper = os.stat(created["upper_dir"])
    assert (upper.st_uid, upper.st_gid) == (100000, 100000)
    # The idmapped view of the store was only there for the mount.
    assert mounts_under(storage.runroot) == [created["path"]]
    assert not list((storage.runroot / "storage/idmap").iterdir())
    # Other maps for the same container: refused; a lost mount comes back idmapped.
    other = {**IDMAP, "uids": [{"container_id": 0, "host_id": 200000, "length": 65536}]}
    with pytest.raises(AlreadyExists, match="user namespace"):
        storage.call("create_rootfs", {"container_id": "u1", "layers": chain, "idmap": other})
    assert overlay.unmount(created["path"])
    again = storage.call("create_rootfs", {"container_id": "u1", "layers": chain,
                                           "idmap": IDMAP})
    assert os.stat(Path(again["path"], "bin/tool")).st_uid == 100000
    storage.call("remove_rootfs", {"container_id": "u1"})


def test_an_idmap_staging_a_killed_worker_left_goes_with_removal_and_reconcile(
        storage: Storage, tmp_path: Path) -> None:
    """kill -9 of the storage worker between attaching the idmapped view of
    the store and the overlay mount leaves that view mounted."""
    stage_dir = storage.runroot / "storage/idmap"
    stage_dir.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "store-view"
    source.mkdir()
    for cid in ("removed", "dead"):
        (stage_dir / cid).mkdir()
        userns.bind(str(source), str(stage_dir / cid))
    try:
        storage.call("remove_rootfs", {"container_id": "removed"})
        assert mounts_under(stage_dir) == [str(stage_dir / "dead")]
        storage.call("reconcile", {"live_containers": []})
        assert mounts_under(stage_dir) == []
        assert list(stage_dir.iterdir()) == []
    finally:
        for cid in ("removed", "dead"):
            while userns.unmount(str(stage_dir / cid)):
                pass
