"""Ops of the storage pool: the bus face of layers, rootfs mounts and disk usage.

    storage.unpack_layer  (blob, media_type, diff_id, parent, chain_id?, digest?)
                          -> {chain_id, diff_id, size, path, unpacked}
    storage.remove_layer  (chain_id) -> {chain_id, removed}
    storage.create_rootfs (container_id, layers, mount_label?)
                          -> rootfs + {created}
    storage.mount_rootfs  (container_id) -> rootfs + {mounted}
    storage.remove_rootfs (container_id) -> {container_id, removed}
    storage.image_fs_info () -> {image_filesystems, container_filesystems}
    storage.reconcile     (live_containers, live_layers?) -> {removed_temp,
                          removed_links, removed_containers, removed_layers, busy}

where rootfs is ``{container_id, path, upper_dir, layers, mount_label}`` and
``path`` is the merged overlay's mount point, the container's root.

Arguments: ``blob`` is the absolute path of the (compressed) layer blob;
``media_type`` its descriptor's media type; ``diff_id`` the image config's
digest of the uncompressed tar; ``parent`` the chain id of the layer below
(None for the bottom one). ``chain_id``, when given, must equal the one
computed from parent and diff_id; ``digest``, when given, is checked against
the blob too. ``layers`` lists chain ids bottom to top. ``size`` is the
uncompressed tar's length, ``path`` the unpacked diff dir, ``unpacked``
false when the layer was already there. ``image_fs_info`` answers with
CRI's ImageFsInfoResponse field names.

This module checks arguments (InvalidArgument naming the field) and is the
error boundary: an OSError from the filesystem becomes Internal here, with
the path and the reason, so the kubelet reads what failed.

``StorageService`` is built once per worker: it holds the pool's paths
(``Layout``, from ``root`` and ``runroot``), and each op is one of its
methods, named after the op's verb.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from ...proto.errors import Internal, InvalidArgument
from ...proto.layers import chain_id as compute_chain_id
from ..base import OpContext, OpTable
from . import compression, fsinfo, layers, reconcile, rootfs
from .layout import Layout, check_container_id, digest_hex


@contextlib.contextmanager
def _bus_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise Internal(f"{what} failed: {exc}") from exc


def _optional_digest(args: dict[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is None:
        return None
    digest_hex(value, key)
    return str(value)


def unpack_request(args: dict[str, Any]) -> layers.UnpackRequest:
    blob = args.get("blob")
    if not isinstance(blob, str) or not os.path.isabs(blob):
        raise InvalidArgument(f"blob must be the absolute path of a layer blob, got {blob!r}")
    media_type = args.get("media_type")
    compression.from_media_type(media_type)
    diff_id = args.get("diff_id")
    digest_hex(diff_id, "diff_id")
    parent = _optional_digest(args, "parent")
    chain = compute_chain_id(parent, str(diff_id))
    given = _optional_digest(args, "chain_id")
    if given is not None and given != chain:
        raise InvalidArgument(f"chain_id {given} does not match parent {parent} and diff_id "
                              f"{diff_id}, which give {chain}")
    return layers.UnpackRequest(blob=blob, media_type=str(media_type), diff_id=str(diff_id),
                                parent=parent, chain_id=chain,
                                digest=_optional_digest(args, "digest"))


def _chain_ids(value: object) -> list[str]:
    if not isinstance(value, list | tuple):
        raise InvalidArgument(f"layers must be a list of chain ids, got {value!r}")
    for item in value:
        digest_hex(item, "each of layers")
    if len(set(value)) != len(value):
        raise InvalidArgument("layers lists a chain id twice")
    return [str(v) for v in value]


def _string_list(args: dict[str, Any], key: str) -> list[str]:
    value = args.get(key)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{key} must be a list of strings, got {value!r}")
    return list(value)


class StorageService:
    """The storage pool's paths, read once at worker start, and its ops."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> StorageService:
        return cls(Layout.from_settings(settings))

    def ops(self) -> OpTable:
        return {
            "storage.unpack_layer": self.unpack_layer,
            "storage.remove_layer": self.remove_layer,
            "storage.create_rootfs": self.create_rootfs,
            "storage.mount_rootfs": self.mount_rootfs,
            "storage.remove_rootfs": self.remove_rootfs,
            "storage.image_fs_info": self.image_fs_info,
            "storage.reconcile": self.reconcile,
        }

    def unpack_layer(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        req = unpack_request(args)
        with _bus_errors(f"unpacking layer {req.chain_id}"):
            return layers.unpack(self.layout, req, ctx.deadline, ctx.check)

    def remove_layer(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        chain_id = args.get("chain_id")
        digest_hex(chain_id, "chain_id")
        with _bus_errors(f"removing layer {chain_id}"):
            return layers.remove(self.layout, str(chain_id), ctx.deadline)

    def create_rootfs(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        cid = check_container_id(args.get("container_id"))
        chain_ids = _chain_ids(args.get("layers"))
        label = args.get("mount_label")
        if label is not None and not isinstance(label, str):
            raise InvalidArgument(f"mount_label must be a string, got {label!r}")
        with _bus_errors(f"creating the rootfs of container {cid}"):
            return rootfs.create(self.layout, cid, chain_ids, label or None, ctx.deadline)

    def mount_rootfs(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        cid = check_container_id(args.get("container_id"))
        with _bus_errors(f"mounting the rootfs of container {cid}"):
            return rootfs.mount(self.layout, cid, ctx.deadline)

    def remove_rootfs(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        cid = check_container_id(args.get("container_id"))
        with _bus_errors(f"removing the rootfs of container {cid}"):
            return rootfs.remove(self.layout, cid, ctx.deadline)

    def image_fs_info(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        with _bus_errors("measuring the image filesystem"):
            return fsinfo.image_fs_info(self.layout, ctx.check)

    def reconcile(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        live_containers = [check_container_id(c) for c in _string_list(args, "live_containers")]
        live_layers = None
        if args.get("live_layers") is not None:
            live_layers = _string_list(args, "live_layers")
            for chain_id in live_layers:
                digest_hex(chain_id, "each of live_layers")
        with _bus_errors("reconciling storage"):
            return reconcile.reconcile(self.layout, live_containers, live_layers,
                                       ctx.deadline, ctx.check)


def build(settings: Mapping[str, Any]) -> OpTable:
    """The op table of one storage worker (workers/cli.py calls it once)."""
    return StorageService.from_settings(settings).ops()
