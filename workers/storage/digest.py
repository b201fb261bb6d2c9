"""Digests of layers: the running sha256 of a stream.

A layer is named on disk by its chain id (proto/layers.py, shared with the
image pool and the supervisor), so one diff stacked on two different parents
is two layers, and identical stacks shared by two images are stored once.
"""

from __future__ import annotations

import hashlib
from typing import Protocol


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class HashingReader:
    """Pass reads through from ``inner``, hashing and counting every byte."""

    def __init__(self, inner: _Readable) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        # zlib-ng's gzip reader fills its buffers with readinto.
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read to the end, so the digest covers the whole stream."""
        while self.read(chunk):
            pass

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()
