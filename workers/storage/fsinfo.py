"""ImageFsInfo: what images and containers take on disk, as CRI's response.

The image filesystem is reported at ``<root>/storage/layers`` (where image
content is unpacked; CRI-O reports its overlay-images dir the same way) and
counts the unpacked layers plus the image pool's store under ``<root>/image``
(compressed blobs, records). The container filesystem is reported at
``<root>/storage/containers`` and counts the containers' upper and work dirs.
Both mount points are created if missing, since the kubelet resolves them to
a device.

Cost: layers are immutable, so each layer's usage is walked once, when it
is unpacked, and read from its record here. The upper dirs change while
containers run: their figures come from the measurer's cache
(layer_usage.py), as the stats RPCs' do, so they are as fresh as those and
never walked here; only the few entries beside each upper dir are. The
image store is walked on every call.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from ...proto import api_pb2 as api
from . import records, usage, usage_cache
from .layout import Layout, is_chain_hex


def _layers_usage(layout: Layout, check: Callable[[], None]) -> usage.Usage:
    total = usage.Usage(bytes=os.lstat(layout.layers_dir).st_blocks * 512, inodes=1)
    for name in os.listdir(layout.layers_dir):
        if not is_chain_hex(name):
            # Unpacks in progress count as they stand.
            total.add(usage.walk(os.path.join(layout.layers_dir, name), check))
            continue
        record = records.layer(layout, name)
        if record is None:
            continue  # removed while we listed
        recorded = record.get("usage") or {}
        total.add(usage.Usage(bytes=int(recorded.get("bytes", 0)),
                              inodes=int(recorded.get("inodes", 0))))
        # The layer dir and its record, around the diff walked at unpack.
        for path in (layout.layer_dir(name),
                     os.path.join(layout.layer_dir(name), records.LAYER_RECORD)):
            with contextlib.suppress(FileNotFoundError):
                total.add(usage.Usage(bytes=os.lstat(path).st_blocks * 512, inodes=1))
    total.add(usage.walk(layout.links_dir, check))
    return total


def _own(path: str) -> usage.Usage:
    """The entry itself, not what is under it; zero if it is gone."""
    try:
        return usage.Usage(bytes=os.lstat(path).st_blocks * 512, inodes=1)
    except FileNotFoundError:
        return usage.Usage()


def _containers_usage(layout: Layout) -> usage.Usage:
    total = _own(layout.containers_dir)
    for name in os.listdir(layout.containers_dir):
        path = os.path.join(layout.containers_dir, name)
        total.add(_own(path))
        if name.startswith("."):
            continue  # a create or removal in flight: possibly a big tree, not walked
        try:
            beside = os.listdir(path)
        except FileNotFoundError:
            continue  # removed while we listed
        # rootfs.json, work and the empty lower: a handful of entries.
        for entry in beside:
            if entry != "upper":
                total.add(usage.walk(os.path.join(path, entry)))
        cached = usage_cache.read(layout, name) or usage_cache.UNMEASURED
        total.add(usage.Usage(bytes=cached.used_bytes, inodes=cached.inodes_used))
    return total


def _entry(mountpoint: str, used: usage.Usage, timestamp: int) -> api.FilesystemUsage:
    return api.FilesystemUsage(
        timestamp=timestamp, fs_id=api.FilesystemIdentifier(mountpoint=mountpoint),
        used_bytes=api.UInt64Value(value=used.bytes),
        inodes_used=api.UInt64Value(value=used.inodes))


def image_fs_info(layout: Layout, check: Callable[[], None]) -> api.ImageFsInfoResponse:
    os.makedirs(layout.layers_dir, mode=0o700, exist_ok=True)
    os.makedirs(layout.containers_dir, mode=0o700, exist_ok=True)
    images = _layers_usage(layout, check)
    images.add(usage.walk(layout.image_dir, check))
    containers = _containers_usage(layout)
    now = time.time_ns()
    return api.ImageFsInfoResponse(
        image_filesystems=[_entry(layout.layers_dir, images, now)],
        container_filesystems=[_entry(layout.containers_dir, containers, now)])
