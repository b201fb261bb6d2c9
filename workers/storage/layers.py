"""Layers: unpack each one exactly once, remove it when no rootfs uses it.

Ordering of an unpack (why a crash at any instant leaves nothing half-done)
    lock(layer, exclusive) -> already there? done
    -> extract into <layers>/.tmp-<hex>-<rand>/diff while hashing the stream
    -> diff_id (and blob digest, if given) checked -> usage walked
    -> layer.json written -> short link l/<short> created (dangling yet)
    -> syncfs -> rename(.tmp-…, <hex>) -> fsync(layers dir) -> unlock
    Until the rename the layer does not exist for anyone; after it, it is
    whole on disk. A failure removes the temp dir and the link before it
    raises; a crash leaves them to reconcile.py, which tells them from a
    live unpack by that unpack's lock.

Concurrency
    Requests for one layer serialize on its flock: the second caller waits,
    then finds the layer present and returns it with ``unpacked: false``.
    Different layers unpack in parallel, in any order: a layer's parent only
    names it (chain id) and need not be unpacked first.

Removal renames the layer to ``.rm-<hex>-<rand>`` (it is gone at once for
everyone), drops its link, then deletes the tree; reconcile finishes a
deletion a crash cut short.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, cast

from ...proto.errors import FailedPrecondition, InvalidArgument, NotFound
from ...proto.storage_ops import RemovedLayer, UnpackedLayer
from .. import locks
from ..records import fsync_dir
from . import compression, records, usage
from .digest import HashingReader
from .extract import LayerWriter
from .layout import LOCK_HOLDER, RM_PREFIX, TMP_PREFIX, Layout

log = logging.getLogger(__name__)

# Short link names: 12 base32 characters (60 random bits) keep a lowerdir
# entry near 40 bytes on the default root, so a legacy mount(2) option
# string (one page) fits about a hundred layers (overlay.py).
_LINK_BYTES = 8
# What an unreadable blob raises: a broken tar or a broken compressed stream.
_READ_ERRORS: tuple[type[Exception], ...] = (tarfile.TarError, *compression.DECODE_ERRORS)
_LINK_CHARS = 12


@dataclass(frozen=True)
class UnpackRequest:
    blob: str
    media_type: str
    diff_id: str
    parent: str | None
    chain_id: str
    digest: str | None

    @property
    def chain_hex(self) -> str:
        return self.chain_id.split(":", 1)[1]


def lock_name(chain_hex: str) -> str:
    return f"layer-{chain_hex}"


def present(layout: Layout, chain_hex: str) -> bool:
    return os.path.isfile(os.path.join(layout.layer_dir(chain_hex), records.LAYER_RECORD))


def describe(layout: Layout, record: dict[str, Any], unpacked: bool) -> UnpackedLayer:
    """The answer of unpack_layers for a present layer."""
    chain_id = str(record["chain_id"])
    return UnpackedLayer(chain_id=chain_id, diff_id=str(record["diff_id"]),
                         size=int(record["size"]),
                         path=layout.diff_dir(chain_id.split(":", 1)[1]), unpacked=unpacked)


def unpack(layout: Layout, req: UnpackRequest, deadline: float,
           check: Callable[[], None]) -> UnpackedLayer:
    chain_hex = req.chain_hex
    # An unpack that fails leaves no layer, and so no lock file either.
    with locks.locked(layout.locks_dir, lock_name(chain_hex), deadline,
                      f"layer {req.chain_id}", holder=LOCK_HOLDER,
                      gone=lambda: records.layer(layout, chain_hex) is None):
        existing = records.layer(layout, chain_hex)
        if existing is not None:
            # Idempotent: the same chain id is the same content.
            return describe(layout, existing, unpacked=False)
        if not os.path.isfile(req.blob):
            raise NotFound(f"layer blob {req.blob} does not exist (diff_id {req.diff_id})")
        os.makedirs(layout.layers_dir, mode=0o700, exist_ok=True)
        os.makedirs(layout.links_dir, mode=0o700, exist_ok=True)
        tmp = os.path.join(layout.layers_dir,
                           f"{TMP_PREFIX}{chain_hex}-{secrets.token_hex(4)}")
        link = ""
        try:
            os.mkdir(tmp, 0o700)
            size = _extract(req, os.path.join(tmp, "diff"), check)
            used = usage.walk(os.path.join(tmp, "diff"), check)
            link = _make_link(layout, chain_hex)
            record = {
                "chain_id": req.chain_id, "diff_id": req.diff_id, "parent": req.parent,
                "digest": req.digest, "media_type": req.media_type, "size": size,
                "usage": {"bytes": used.bytes, "inodes": used.inodes}, "link": link,
                "created": time.time_ns(),
            }
            records.write(os.path.join(tmp, records.LAYER_RECORD), record)
            _syncfs(tmp)
            os.rename(tmp, layout.layer_dir(chain_hex))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if link:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(layout.links_dir, link))
            raise
        fsync_dir(layout.layers_dir)
        log.info("Unpacked layer %s (diff %s, %d bytes)", req.chain_id, req.diff_id, size)
        return describe(layout, record, unpacked=True)


def _extract(req: UnpackRequest, diff: str, check: Callable[[], None]) -> int:
    """Unpack the blob into ``diff`` (created); return the tar stream's size."""
    declared = compression.from_media_type(req.media_type)
    os.mkdir(diff)
    # Explicitly, whatever the umask: a "./" entry in the tar may change it.
    os.chmod(diff, 0o755)
    with open(req.blob, "rb") as raw:
        kind = compression.choose(declared, raw, req.blob)
        compressed = HashingReader(raw)
        stream = HashingReader(compression.open_stream(compressed, kind))
        root_fd = os.open(diff, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        writer = LayerWriter(root_fd, req.diff_id)
        try:
            # Stream mode ("r|") only ever calls read() on its source.
            with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|") as tar:
                for member in tar:
                    check()
                    data = tar.extractfile(member) if member.isreg() else None
                    writer.add(member, data)
            writer.finish()
            # The tar's end marker may come before the stream's end (record
            # padding): the diff_id covers every byte.
            stream.drain()
            compressed.drain()
        except _READ_ERRORS as exc:
            raise InvalidArgument(
                f"layer blob {req.blob} is not a readable {kind.value} tar stream "
                f"({exc}); the image is corrupt or its media type is wrong") from exc
        finally:
            writer.close()
            os.close(root_fd)
    if stream.digest() != req.diff_id:
        raise InvalidArgument(
            f"layer blob {req.blob} unpacks to {stream.digest()}, but the image config "
            f"says diff_id {req.diff_id}; the image is corrupt or was tampered with")
    if req.digest is not None and compressed.digest() != req.digest:
        raise InvalidArgument(
            f"layer blob {req.blob} has digest {compressed.digest()}, not {req.digest}; "
            "the blob store holds a corrupt copy")
    return stream.size


def _make_link(layout: Layout, chain_hex: str) -> str:
    """Create ``l/<short> -> ../layers/<hex>/diff``; return ``<short>``."""
    target = os.path.join("..", "layers", chain_hex, "diff")
    while True:
        name = base64.b32encode(secrets.token_bytes(_LINK_BYTES)).decode()[:_LINK_CHARS]
        try:
            os.symlink(target, os.path.join(layout.links_dir, name))
        except FileExistsError:
            continue  # 60 random bits collided: draw again
        return name


def remove(layout: Layout, chain_id: str, deadline: float) -> RemovedLayer:
    chain_hex = chain_id.split(":", 1)[1]
    lock = locks.acquire(layout.locks_dir, lock_name(chain_hex), deadline,
                         f"layer {chain_id}", holder=LOCK_HOLDER)
    try:
        record = records.layer(layout, chain_hex)
        if record is None:
            # Absent is success: removal is idempotent like RemoveImage.
            return RemovedLayer(chain_id=chain_id, removed=False)
        users = records.containers_using(layout, chain_id)
        if users:
            raise FailedPrecondition(
                f"layer {chain_id} is in use by the rootfs of container(s) "
                f"{', '.join(users)}; remove those containers first")
        doomed = os.path.join(layout.layers_dir,
                              f"{RM_PREFIX}{chain_hex}-{secrets.token_hex(4)}")
        os.rename(layout.layer_dir(chain_hex), doomed)
        link = record.get("link")
        if isinstance(link, str) and link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(layout.links_dir, link))
        shutil.rmtree(doomed)
    finally:
        lock.release(unlink=True)
    log.info("Removed layer %s", chain_id)
    return RemovedLayer(chain_id=chain_id, removed=True)


def _syncfs(path: str) -> None:
    """Flush the filesystem holding ``path``: one call instead of an fsync per file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs({path}): {os.strerror(err)}")
    finally:
        os.close(fd)
