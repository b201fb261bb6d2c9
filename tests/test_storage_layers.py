"""Layer unpack (storage.unpack_layers, storage.remove_layer) on a real
filesystem: what a layer tar holds arrives intact and in overlay form, what
escapes the layer is refused with nothing left behind, and a layer is
unpacked once however many callers ask at the same time."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from layers import MTIME, LayerTar, Storage, chain_of, sha256, storage_in

from podvisor.proto.errors import Cancelled, DeadlineExceeded, InvalidArgument, NotFound
from podvisor.proto.storage_ops import UnpackLayer, UnpackLayers
from podvisor.workers import locks

NS = 1_000_000_000


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    yield from storage_in(tmp_path)


def rich_layer() -> LayerTar:
    return (LayerTar()
            .dir("etc", mtime=MTIME + 1)
            .file("etc/hostname", b"podvisor\n", mode=0o640, uid=12, gid=34, mtime=MTIME + 2,
                  xattrs={"user.note": b"hello", "user.bin": b"\x00\xff\x01"})
            .dir("tmp", mode=0o1777)
            .file("bin/su", b"\x7fELF", mode=0o4755, uid=1000, gid=1000)
            .file("bin/wall", b"\x7fELF", mode=0o2755, gid=5)
            .symlink("bin/sh", "/bin/busybox", uid=7, gid=8, mtime=MTIME + 3)
            .symlink("lib", "usr/lib")
            .file("usr/lib/libc.so", b"libc" * 1000)
            .hardlink("usr/lib/libc.so.6", "usr/lib/libc.so")
            .chardev("dev/null", 1, 3)
            .blockdev("dev/loop0", 7, 0)
            .fifo("run/initctl", mode=0o600)
            .file("opt/late", b"x"))


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_unpack_keeps_every_kind_of_entry(storage: Storage, kind: str) -> None:
    tar = rich_layer().bytes()
    blob = storage.blob(tar, kind)
    result = storage.unpack_one(blob.args())
    assert result == {"chain_id": blob.diff_id, "diff_id": blob.diff_id, "size": len(tar),
                      "path": str(storage.layers_dir / blob.diff_id[7:] / "diff"),
                      "unpacked": True}
    diff = Path(result["path"])

    st = os.lstat(diff / "etc/hostname")
    assert (diff / "etc/hostname").read_bytes() == b"podvisor\n"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 12, 34)
    assert st.st_mtime_ns == (MTIME + 2) * NS
    assert os.getxattr(diff / "etc/hostname", "user.note") == b"hello"
    assert os.getxattr(diff / "etc/hostname", "user.bin") == b"\x00\xff\x01"
    # Directory times are set after their children were written.
    assert os.lstat(diff / "etc").st_mtime_ns == (MTIME + 1) * NS
    assert stat.S_IMODE(os.lstat(diff / "tmp").st_mode) == 0o1777

    su = os.lstat(diff / "bin/su")
    assert (stat.S_IMODE(su.st_mode), su.st_uid) == (0o4755, 1000)  # setuid survived chown
    assert stat.S_IMODE(os.lstat(diff / "bin/wall").st_mode) == 0o2755

    sh = os.lstat(diff / "bin/sh")
    assert stat.S_ISLNK(sh.st_mode) and os.readlink(diff / "bin/sh") == "/bin/busybox"
    assert (sh.st_uid, sh.st_gid, sh.st_mtime_ns) == (7, 8, (MTIME + 3) * NS)
    assert os.readlink(diff / "lib") == "usr/lib"

    a, b = os.lstat(diff / "usr/lib/libc.so"), os.lstat(diff / "usr/lib/libc.so.6")
    assert a.st_ino == b.st_ino and a.st_nlink == 2

    null = os.lstat(diff / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = os.lstat(diff / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0)
    assert stat.S_ISFIFO(os.lstat(diff / "run/initctl").st_mode)
    # Parents the tar never listed are made 0755 root.
    assert stat.S_IMODE(os.lstat(diff / "opt").st_mode) == 0o755


def test_whiteouts_take_the_overlay_form(storage: Storage) -> None:
    tar = (LayerTar().whiteout("etc/passwd").opaque("var/cache")
           .file("var/cache/new", b"n").whiteout("gone-dir"))
    diff = Path(storage.unpack(tar)["path"])
    for name in ("etc/passwd", "gone-dir"):
        st = os.lstat(diff / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(diff / "var/cache", "trusted.overlay.opaque") == b"y"
    assert (diff / "var/cache/new").read_bytes() == b"n"
    assert not any(n.startswith(".wh.") for _, ds, fs in os.walk(diff) for n in ds + fs)


def test_a_whiteout_never_hides_its_own_layer(storage: Storage) -> None:
    # image-spec: a whiteout applies to lower layers only. A directory of
    # this layer that a whiteout names hides the lower ones by opacity; one
    # written over a whiteout does too.
    tar = (LayerTar().file("keep", b"k").whiteout("keep")
           .dir("d").file("d/mine", b"m").whiteout("d")
           .whiteout("later").dir("later").file("later/x", b"x"))
    diff = Path(storage.unpack(tar)["path"])
    assert (diff / "keep").read_bytes() == b"k"
    assert (diff / "d/mine").read_bytes() == b"m"
    assert os.getxattr(diff / "d", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(diff / "later", "trusted.overlay.opaque") == b"y"


def test_later_entries_replace_earlier_ones(storage: Storage) -> None:
    tar = (LayerTar().file("a", b"old").file("a", b"new")
           .dir("b").file("b/inner", b"i").file("b", b"now a file")
           .symlink("c", "a").dir("c"))
    diff = Path(storage.unpack(tar)["path"])
    assert (diff / "a").read_bytes() == b"new"
    assert (diff / "b").read_bytes() == b"now a file"
    assert stat.S_ISDIR(os.lstat(diff / "c").st_mode)


def test_overlay_xattrs_are_not_taken_from_a_tar(storage: Storage) -> None:
    tar = LayerTar().dir("d", xattrs={"trusted.overlay.redirect": b"/etc"})
    diff = Path(storage.unpack(tar)["path"])
    assert "trusted.overlay.redirect" not in os.listxattr(diff / "d")


def test_a_mislabelled_blob_is_read_by_its_magic_bytes(storage: Storage) -> None:
    blob = storage.blob(LayerTar().file("f", b"1"), "gzip")
    args = blob.args(media_type="application/vnd.docker.image.rootfs.diff.tar")
    assert storage.unpack_one(args)["unpacked"] is True
    plain = storage.blob(LayerTar().file("g", b"2"), "none")
    args = plain.args(media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    assert storage.unpack_one(args)["unpacked"] is True


@pytest.mark.parametrize(("key", "value", "message"), [
    ("media_type", "application/vnd.oci.image.layer.v1.tar+encrypted", "media_type"),
    ("diff_id", "sha256:nothex", "diff_id"),
    ("blob", "relative/path", "absolute path"),
    ("chain_id", "sha256:" + "0" * 64, "does not match"),
    ("parent", "md5:abc", "parent"),
    # Types and unknown fields are refused by the contract (msgspec's words).
    ("blob", 7, r"Expected `str`, got `int` - at `\$\.layers\[0\]\.blob`"),
    ("parent", ["sha256:" + "0" * 64], r"`\$\.layers\[0\]\.parent`"),
    ("size", 1, "unknown field `size`"),
])
def test_bad_arguments_are_named(storage: Storage, key: str, value: object,
                                 message: str) -> None:
    args = storage.blob(LayerTar().file("f")).args()
    args[key] = value
    with pytest.raises(InvalidArgument, match=message):
        storage.unpack_one(args)
    assert storage.layer_entries() == []


def test_missing_blob_is_not_found(storage: Storage) -> None:
    args = storage.blob(LayerTar().file("f")).args()
    os.unlink(args["blob"])
    with pytest.raises(NotFound, match="does not exist"):
        storage.unpack_one(args)


def test_chain_id_follows_the_parent(storage: Storage) -> None:
    base, top = LayerTar().file("a"), LayerTar().file("b")
    chain = storage.stack(base, top)
    diffs = [sha256(LayerTar().file("a").bytes()), sha256(LayerTar().file("b").bytes())]
    assert chain == chain_of(diffs)
    # The same diff over no parent is another layer.
    assert storage.unpack(LayerTar().file("b"))["chain_id"] == diffs[1]
    assert len(os.listdir(storage.layers_dir)) == 3


def test_unpack_layers_unpacks_a_chain_in_one_call(storage: Storage) -> None:
    bottom = storage.blob(LayerTar().file("a", b"1"))
    top = storage.blob(LayerTar().file("b", b"2"))
    chain = chain_of([bottom.diff_id, top.diff_id])
    args = {"layers": [bottom.args(), top.args(chain[0])]}
    done = storage.call("unpack_layers", args)["layers"]
    assert [(d["chain_id"], d["unpacked"]) for d in done] == [(chain[0], True), (chain[1], True)]
    assert (Path(done[0]["path"]) / "a").read_bytes() == b"1"
    assert (Path(done[1]["path"]) / "b").read_bytes() == b"2"
    again = storage.call("unpack_layers", args)["layers"]
    assert [(d["chain_id"], d["unpacked"]) for d in again] == [(chain[0], False),
                                                                (chain[1], False)]


def test_unpack_layers_refuses_a_broken_chain_unpacking_nothing(storage: Storage) -> None:
    bottom = storage.blob(LayerTar().file("a", b"1"))
    top = storage.blob(LayerTar().file("b", b"2"))
    # The top one's parent is not the bottom one's chain id.
    with pytest.raises(InvalidArgument, match="chain id of the layer below"):
        storage.call("unpack_layers", {"layers": [bottom.args(), top.args()]})
    assert not storage.layers_dir.exists() or os.listdir(storage.layers_dir) == []


def test_diff_id_mismatch_leaves_nothing(storage: Storage) -> None:
    args = storage.blob(LayerTar().file("f", b"real")).args()
    args["diff_id"] = sha256(b"something else")
    with pytest.raises(InvalidArgument, match="diff_id"):
        storage.unpack_one(args)
    assert storage.layer_entries() == []


def test_blob_digest_mismatch_leaves_nothing(storage: Storage) -> None:
    args = storage.blob(LayerTar().file("f", b"real")).args(digest=sha256(b"other"))
    with pytest.raises(InvalidArgument, match="corrupt copy"):
        storage.unpack_one(args)
    assert storage.layer_entries() == []


def test_corrupt_stream_leaves_nothing(storage: Storage) -> None:
    blob = storage.blob(rich_layer(), "gzip")
    data = bytearray(Path(blob.path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(blob.path).write_bytes(bytes(data))
    with pytest.raises(InvalidArgument, match="not a readable gzip tar stream"):
        storage.unpack_one(blob.args())
    assert storage.layer_entries() == []


def escapes(outside: Path) -> list[tuple[str, LayerTar, str]]:
    return [
        ("dot-dot", LayerTar().file("ok").file("../evil", b"x"), "'..' component"),
        ("nested dot-dot", LayerTar().file("a/../../evil", b"x"), "'..' component"),
        ("absolute", LayerTar().file(f"{outside}/evil", b"x"), "absolute path"),
        ("symlink climbing out", LayerTar().symlink("up", "../../../.."), "climbs above"),
        ("symlink climbing out from a subdir",
         LayerTar().symlink("a/b/up", "../../../etc"), "climbs above"),
        ("write through an absolute symlink",
         LayerTar().symlink("link", str(outside)).file("link/evil", b"x"), "symlink"),
        ("write through a symlink in the layer",
         LayerTar().dir("d").symlink("here", "d").file("here/evil", b"x"), "symlink"),
        ("dir through a symlink", LayerTar().symlink("link", str(outside)).dir("link/sub"),
         "symlink"),
        ("whiteout through a symlink",
         LayerTar().symlink("link", str(outside)).whiteout("link/target"), "symlink"),
        ("hard link out", LayerTar().hardlink("pw", "../../../../etc/passwd"), "'..'"),
        ("hard link absolute", LayerTar().hardlink("pw", "/etc/passwd"), "absolute"),
        ("hard link to nothing", LayerTar().hardlink("pw", "etc/passwd"), "not in this layer"),
        ("hard link through a symlink",
         LayerTar().symlink("link", str(outside)).hardlink("pw", "link/target"), "symlink"),
        ("hard link to a directory", LayerTar().dir("d").hardlink("h", "d"), "directory"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_entries_escaping_the_layer_are_refused(storage: Storage, tmp_path: Path,
                                               case: int) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_bytes(b"precious")
    name, tar, reason = escapes(outside)[case]
    blob = storage.blob(tar)
    with pytest.raises(InvalidArgument) as err:
        storage.unpack_one(blob.args())
    assert reason in str(err.value), name
    assert "was not unpacked" in str(err.value)
    assert storage.layer_entries() == [], name
    assert sorted(os.listdir(outside)) == ["target"], name
    assert (outside / "target").read_bytes() == b"precious"
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_escape_cases_are_all_parametrized(tmp_path: Path) -> None:
    assert len(escapes(tmp_path)) == 14


def test_concurrent_unpacks_of_one_layer_unpack_it_once(storage: Storage) -> None:
    blob = storage.blob(rich_layer(), "zstd")
    start = threading.Barrier(8)

    def unpack(_: int) -> dict[str, Any]:
        start.wait()
        result: dict[str, Any] = storage.unpack_one(blob.args())
        return result

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(unpack, range(8)))
    assert sum(r["unpacked"] for r in results) == 1
    assert {r["path"] for r in results} == {results[0]["path"]}
    assert len(os.listdir(storage.layers_dir)) == 1  # no temp dir left behind
    assert len(os.listdir(storage.root / "storage" / "l")) == 1


def test_a_second_unpack_is_a_no_op(storage: Storage) -> None:
    blob = storage.blob(rich_layer())
    first = storage.unpack_one(blob.args())
    marker = Path(first["path"]) / "etc/hostname"
    before = os.lstat(marker).st_ino
    again = storage.unpack_one(blob.args())
    assert again == {**first, "unpacked": False}
    assert os.lstat(marker).st_ino == before


def test_a_layer_held_elsewhere_times_out_naming_it(storage: Storage) -> None:
    blob = storage.blob(rich_layer())
    # Another worker's unpack of the same layer, still running.
    held = locks.try_acquire(str(storage.runroot / "storage/locks"),
                             f"layer-{blob.diff_id[7:]}")
    assert held is not None
    try:
        with pytest.raises(DeadlineExceeded, match=f"layer {blob.diff_id} is busy"):
            storage.unpack_one(blob.args(), timeout=0.2)
    finally:
        held.release()
    assert storage.layer_entries() == []
    assert storage.unpack_one(blob.args())["unpacked"] is True


def test_a_cancelled_unpack_leaves_nothing(storage: Storage) -> None:
    blob = storage.blob(rich_layer())
    ctx = storage.ctx("storage.unpack_layers")
    ctx.cancelled.set()
    with pytest.raises(Cancelled):
        storage.service.unpack_layers(ctx, UnpackLayers(layers=[UnpackLayer(**blob.args())]))
    assert storage.layer_entries() == []


def test_remove_layer_is_idempotent(storage: Storage) -> None:
    chain_id = storage.unpack(rich_layer())["chain_id"]
    assert storage.call("remove_layer", {"chain_id": chain_id}) == {
        "chain_id": chain_id, "removed": True}
    assert storage.layer_entries() == []
    assert storage.call("remove_layer", {"chain_id": chain_id})["removed"] is False
    # And it can come back.
    assert storage.unpack(rich_layer())["unpacked"] is True
