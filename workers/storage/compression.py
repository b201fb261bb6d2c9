"""Layer blobs as uncompressed tar streams: gzip, zstd or none.

The media type must name a tar layer this pool can read (OCI and Docker
names, distributable or not); encrypted layers and anything else are
refused. The decompressor is then chosen by the blob's magic bytes, which
are what the blob really is: registries and old tools are known to label an
uncompressed layer ``+gzip`` and the like. Either way the uncompressed
stream is checked against the diff_id afterwards, so a wrong label can
never make different content pass. A disagreement is logged.

Everything here is streaming: nothing holds more than one read buffer.

gzip is inflated by zlib-ng (``gzip_ng``), a drop-in for the standard
library's gzip module that inflates about 1.4 times as fast here
(``bench/unpack.py``); its errors are the same classes, plus
``zlib_ng.error``.
"""

from __future__ import annotations

import enum
import gzip
import logging
import zlib
from typing import BinaryIO, Protocol, cast

import zstandard
from zlib_ng import gzip_ng, zlib_ng

from ...proto.errors import InvalidArgument

log = logging.getLogger(__name__)


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_LAYER_TYPES: dict[str, Compression] = {}
for _prefix in ("application/vnd.oci.image.layer.v1.tar",
                "application/vnd.oci.image.layer.nondistributable.v1.tar"):
    _LAYER_TYPES[_prefix] = Compression.NONE
    _LAYER_TYPES[_prefix + "+gzip"] = Compression.GZIP
    _LAYER_TYPES[_prefix + "+zstd"] = Compression.ZSTD
_LAYER_TYPES.update({
    "application/vnd.docker.image.rootfs.diff.tar": Compression.NONE,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.diff.tar.zstd": Compression.ZSTD,
})

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_READ_SIZE = 1 << 20


def from_media_type(media_type: str) -> Compression:
    """The compression a layer media type declares; InvalidArgument if unknown."""
    if media_type in _LAYER_TYPES:
        return _LAYER_TYPES[media_type]
    raise InvalidArgument(
        f"media_type {media_type!r} is not a layer this storage pool can unpack; "
        f"supported: {', '.join(sorted(_LAYER_TYPES))}")


def sniff(head: bytes) -> Compression:
    """What the first bytes of a blob say it is (tar when not compressed)."""
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.NONE


def choose(declared: Compression, blob: BinaryIO, blob_name: str) -> Compression:
    """Pick the decompressor for ``blob`` (positioned at 0, left there)."""
    head = blob.read(4)
    blob.seek(0)
    actual = sniff(head)
    if actual is not declared:
        log.warning("Layer blob %s is labelled %s but its magic bytes say %s; using %s",
                    blob_name, declared.value, actual.value, actual.value)
    return actual


def open_stream(blob: Readable, compression: Compression) -> Readable:
    """A reader of the uncompressed bytes of ``blob``."""
    # Both decompressors only ever call read() on their source here (gzip
    # seeks only to rewind, which nothing does), so any reader will do.
    source = cast(BinaryIO, blob)
    if compression is Compression.GZIP:
        # It reads concatenated members too, as gzip(1) does. (zlib-ng
        # leaves its gzip module unannotated.)
        reader: Readable = gzip_ng.GzipNGFile(  # type: ignore[no-untyped-call]
            fileobj=source, mode="rb")
        return reader
    if compression is Compression.ZSTD:
        return zstandard.ZstdDecompressor().stream_reader(
            source, read_size=_READ_SIZE, read_across_frames=True, closefd=False)
    return blob


# The errors a corrupt compressed stream raises, whatever the format.
# (zlib-ng's stub declares its error class as an instance.)
DECODE_ERRORS: tuple[type[Exception], ...] = (
    EOFError, gzip.BadGzipFile, zlib.error, cast(type[Exception], zlib_ng.error),
    zstandard.ZstdError)
