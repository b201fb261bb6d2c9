"""Helpers for the storage tests: layer tars built in Python, and a storage
root under a test's tmp_path with the pool's service and real OpContexts.
Ops are called with the maps the bus carries, checked against their
contracts as the worker checks them.

Layers are OCI layer tars as a registry would serve them: PAX format (so
xattrs travel as ``SCHILY.xattr.*``), whiteouts as empty ``.wh.`` files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from podvisor.proto.contract import from_wire, to_wire
from podvisor.workers.base import OpContext
from podvisor.workers.storage.ops import StorageService

MEDIA_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
MTIME = 1_600_000_000


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_of(diff_ids: list[str]) -> list[str]:
    """Chain ids of a stack of diff ids, bottom first (image-spec)."""
    chain: list[str] = []
    for diff in diff_ids:
        chain.append(diff if not chain else sha256(f"{chain[-1]} {diff}".encode()))
    return chain


class LayerTar:
    """Build one layer tar entry by entry (chainable), then ``bytes()``."""

    def __init__(self) -> None:
        self._entries: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def _add(self, name: str, kind: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
             mtime: float = MTIME, data: bytes | None = None, linkname: str = "",
             xattrs: Mapping[str, bytes] | None = None, dev: tuple[int, int] = (0, 0)
             ) -> LayerTar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, mtime
        info.linkname = linkname
        info.devmajor, info.devminor = dev
        if xattrs:
            # Binary values survive as surrogate escapes (tarfile's PAX rules).
            info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                for k, v in xattrs.items()}
        if data is not None:
            info.size = len(data)
        self._entries.append((info, data))
        return self

    def file(self, name: str, data: bytes = b"", **kw: Any) -> LayerTar:
        return self._add(name, tarfile.REGTYPE, data=data, **kw)

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> LayerTar:
        return self._add(name, tarfile.DIRTYPE, mode=mode, **kw)

    def symlink(self, name: str, target: str, **kw: Any) -> LayerTar:
        return self._add(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw)

    def hardlink(self, name: str, target: str) -> LayerTar:
        return self._add(name, tarfile.LNKTYPE, linkname=target)

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666) -> LayerTar:
        return self._add(name, tarfile.CHRTYPE, mode=mode, dev=(major, minor))

    def blockdev(self, name: str, major: int, minor: int, mode: int = 0o660) -> LayerTar:
        return self._add(name, tarfile.BLKTYPE, mode=mode, dev=(major, minor))

    def fifo(self, name: str, mode: int = 0o600) -> LayerTar:
        return self._add(name, tarfile.FIFOTYPE, mode=mode)

    def whiteout(self, path: str) -> LayerTar:
        head, tail = os.path.split(path)
        return self.file(os.path.join(head, f".wh.{tail}"))

    def opaque(self, directory: str) -> LayerTar:
        return self.file(os.path.join(directory, ".wh..wh..opq"))

    def bytes(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in self._entries:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@dataclass(frozen=True)
class Blob:
    path: str
    media_type: str
    diff_id: str
    digest: str
    size: int

    def args(self, parent: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"blob": self.path, "media_type": self.media_type, "diff_id": self.diff_id,
                "parent": parent, **extra}


class Storage:
    """A storage root and runroot under ``base``; calls the pool's ops for real."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.runroot = base / "run"
        self.blobs = base / "blobs"
        for d in (self.root, self.runroot, self.blobs):
            d.mkdir(parents=True, exist_ok=True)
        self.settings = {"root": str(self.root), "runroot": str(self.runroot),
                         "stats": {"layer_usage_interval": 10.0, "layer_usage_budget": 0.2}}
        # Built from the settings as a worker builds it.
        self.service = StorageService.from_settings(self.settings)
        self.ops = self.service.ops()

    def ctx(self, op: str = "storage.test", timeout: float = 60.0) -> OpContext:
        return OpContext(request_id=os.urandom(8), op=op,
                         deadline=time.monotonic() + timeout)

    def call(self, op: str, args: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """``storage.<op>`` as the worker runs it: the map rebuilt as the
        op's arguments (InvalidArgument naming a wrong field), the result
        checked and turned back into a map."""
        served = self.ops[f"storage.{op}"]
        typed = from_wire(args, served.op.args, f"storage.{op} arguments")
        result = served.fn(self.ctx(f"storage.{op}", timeout), typed)
        return to_wire(result, served.op.result)

    def blob(self, tar: bytes | LayerTar, kind: str = "gzip") -> Blob:
        raw = tar.bytes() if isinstance(tar, LayerTar) else tar
        data = compress(raw, kind)
        digest = sha256(data)
        path = self.blobs / digest.split(":")[1]
        path.write_bytes(data)
        return Blob(str(path), MEDIA_TYPES[kind], sha256(raw), digest, len(raw))

    def unpack_one(self, args: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """``storage.unpack_layers`` of one layer; its answer."""
        result: dict[str, Any] = self.call("unpack_layers", {"layers": [args]},
                                           timeout)["layers"][0]
        return result

    def unpack(self, tar: bytes | LayerTar, parent: str | None = None,
               kind: str = "gzip") -> dict[str, Any]:
        return self.unpack_one(self.blob(tar, kind).args(parent))

    def stack(self, *tars: LayerTar) -> list[str]:
        """Unpack layers bottom first; return their chain ids."""
        chain: list[str] = []
        for tar in tars:
            chain.append(self.unpack(tar, chain[-1] if chain else None)["chain_id"])
        return chain

    @property
    def layers_dir(self) -> Path:
        return self.root / "storage" / "layers"

    def layer_entries(self) -> list[str]:
        """Everything in the layers and links dirs (temp dirs included)."""
        found = []
        for d in (self.layers_dir, self.root / "storage" / "l"):
            if d.is_dir():
                found += sorted(os.listdir(d))
        return found


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace."""
    prefix = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split(" ")[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def storage_in(base: Path) -> Iterator[Storage]:
    """Body of a ``storage`` fixture: fails the test that leaves a mount behind,
    after unmounting it so the next test starts clean."""
    storage = Storage(base)
    yield storage
    left = mounts_under(base)
    for point in reversed(left):
        subprocess.run(["umount", "-l", point], check=False)
    assert not left, f"the test left mounts behind: {left}"
