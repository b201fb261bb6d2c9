"""How fast a gzip layer unpacks: the storage pool's pipeline (compressed
bytes hashed, inflated, uncompressed bytes hashed, tar read in stream mode
and every file's data read) with the standard library's gzip and with
zlib-ng's, on the same blob, in one run.

The layer is made here: a tar of a few hundred files, half random bytes,
half text-like runs, about 200 MB, gzipped at level 6 once. Each reader
unpacks it R times, interleaved; the table gives the median.

    .venv/bin/python bench/unpack.py [--mb 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

from zlib_ng import gzip_ng, gzip_ng_threaded


class Hashing:
    """A reader that hashes what passes through, as the pool's does."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.source.read(n)
        self.digest.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def make_blob(path: str, megabytes: int) -> None:
    rng = os.urandom
    with gzip.open(path, "wb", compresslevel=6) as out, \
            tarfile.open(fileobj=out, mode="w|") as tar:
        size = 512 * 1024
        for index in range(megabytes * 2):
            data = rng(size) if index % 2 else (b"line %d of some text\n" % index) * (size // 24)
            info = tarfile.TarInfo(f"dir{index % 16}/file{index}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def unpack(path: str, opener: Callable[[Any], Any]) -> float:
    start = time.perf_counter()
    with open(path, "rb") as raw:
        compressed = Hashing(raw)
        stream = Hashing(opener(compressed))
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[arg-type]
            for member in tar:
                handle: IO[bytes] | None = tar.extractfile(member) if member.isreg() else None
                while handle is not None and handle.read(1 << 20):
                    pass
        while stream.read(1 << 20):
            pass
        close = getattr(stream.source, "close", None)
        if close is not None:
            close()
    return time.perf_counter() - start


READERS: dict[str, Callable[[Any], Any]] = {
    "stdlib gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    "zlib-ng gzip_ng": lambda f: gzip_ng.GzipNGFile(fileobj=f, mode="rb"),
    "zlib-ng gzip_ng_threaded": lambda f: gzip_ng_threaded.open(f, "rb"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pvunpack-") as base:
        blob = os.path.join(base, "layer.tar.gz")
        make_blob(blob, args.mb)
        size = os.path.getsize(blob)
        times: dict[str, list[float]] = {name: [] for name in READERS}
        for _ in range(args.rounds):
            for name, opener in READERS.items():
                times[name].append(unpack(blob, opener))
    base_time = statistics.median(times["stdlib gzip"])
    print(f"a {args.mb} MB tar, {size / 1e6:.0f} MB gzipped, {args.rounds} rounds")
    print(f"{'reader':>26} | {'median':>8} | {'MB/s (tar)':>10} | ratio")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:>26} | {median:>6.2f} s | {args.mb / median:>10.0f} | "
              f"{median / base_time:.2f}")


if __name__ == "__main__":
    main()
