"""Ops of the storage pool: the bus face of layers, rootfs mounts and disk usage.

The contracts (arguments, results, what each field means) are declared in
proto/storage_ops.py; the worker rebuilds the typed arguments before an op
runs, so a field of the wrong type never gets here.

This module checks argument values (InvalidArgument naming the field: an
absolute blob path, digest syntax, container id syntax, a chain id that
matches its parent and diff_id) and is the error boundary: an OSError from
the filesystem becomes Internal here, with the path and the reason, so the
kubelet reads what failed.

``StorageService`` is built once per worker: it holds the pool's paths
(``Layout``, from ``root`` and ``runroot``), and each op is one of its
methods, named after the op's verb. The background measurer of the
writable layers (layer_usage.py) is started beside it by __main__.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from ...proto.contract import Empty
from ...proto.errors import Internal, InvalidArgument
from ...proto.layers import chain_id as compute_chain_id
from ...proto.stats import LayerUsageQuery, LayerUsages
from ...proto.storage_ops import (
    CREATE_ROOTFS,
    IMAGE_FS_INFO,
    LAYER_USAGE,
    RECONCILE,
    REMOVE_LAYER,
    REMOVE_ROOTFS,
    UNPACK_LAYERS,
    CreatedRootfs,
    CreateRootfs,
    ImageFsInfo,
    Reconcile,
    Reconciled,
    RemovedLayer,
    RemovedRootfs,
    RemoveLayer,
    RemoveRootfs,
    UnpackedLayers,
    UnpackLayer,
    UnpackLayers,
)
from ..base import OpContext, Served, serve
from . import compression, fsinfo, layer_usage, layers, reconcile, rootfs
from .layout import Layout, check_container_id, digest_hex


@contextlib.contextmanager
def _bus_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise Internal(f"{what} failed: {exc}") from exc


def _optional_digest(value: str | None, what: str) -> str | None:
    if value is not None:
        digest_hex(value, what)
    return value


def unpack_request(args: UnpackLayer) -> layers.UnpackRequest:
    if not os.path.isabs(args.blob):
        raise InvalidArgument(
            f"blob must be the absolute path of a layer blob, got {args.blob!r}")
    compression.from_media_type(args.media_type)
    digest_hex(args.diff_id, "diff_id")
    parent = _optional_digest(args.parent, "parent")
    chain = compute_chain_id(parent, args.diff_id)
    given = _optional_digest(args.chain_id, "chain_id")
    if given is not None and given != chain:
        raise InvalidArgument(f"chain_id {given} does not match parent {parent} and diff_id "
                              f"{args.diff_id}, which give {chain}")
    return layers.UnpackRequest(blob=args.blob, media_type=args.media_type,
                                diff_id=args.diff_id, parent=parent, chain_id=chain,
                                digest=_optional_digest(args.digest, "digest"))


def _chain_ids(chain_ids: list[str]) -> list[str]:
    for chain_id in chain_ids:
        digest_hex(chain_id, "each of layers")
    if len(set(chain_ids)) != len(chain_ids):
        raise InvalidArgument("layers lists a chain id twice")
    return chain_ids


class StorageService:
    """The storage pool's paths, read once at worker start, and its ops."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> StorageService:
        return cls(Layout.from_settings(settings))

    def ops(self) -> dict[str, Served[Any, Any]]:
        return serve(
            Served(UNPACK_LAYERS, self.unpack_layers),
            Served(REMOVE_LAYER, self.remove_layer),
            Served(CREATE_ROOTFS, self.create_rootfs),
            Served(REMOVE_ROOTFS, self.remove_rootfs),
            Served(IMAGE_FS_INFO, self.image_fs_info),
            Served(RECONCILE, self.reconcile),
            Served(LAYER_USAGE, self.layer_usage),
        )

    def unpack_layers(self, ctx: OpContext, args: UnpackLayers) -> UnpackedLayers:
        # All checked first: a chain that does not hold together unpacks
        # nothing.
        requests: list[layers.UnpackRequest] = []
        below = args.layers[0].parent if args.layers else None
        for layer in args.layers:
            req = unpack_request(layer)
            if req.parent != below:
                raise InvalidArgument(f"layer {req.diff_id} has parent {req.parent}; the "
                                      f"chain id of the layer below it is {below}")
            requests.append(req)
            below = req.chain_id
        done = []
        for req in requests:
            ctx.check()
            with _bus_errors(f"unpacking layer {req.chain_id}"):
                done.append(layers.unpack(self.layout, req, ctx.deadline, ctx.check))
        return UnpackedLayers(layers=done)

    def remove_layer(self, ctx: OpContext, args: RemoveLayer) -> RemovedLayer:
        digest_hex(args.chain_id, "chain_id")
        with _bus_errors(f"removing layer {args.chain_id}"):
            return layers.remove(self.layout, args.chain_id, ctx.deadline)

    def create_rootfs(self, ctx: OpContext, args: CreateRootfs) -> CreatedRootfs:
        cid = check_container_id(args.container_id)
        chain_ids = _chain_ids(args.layers)
        with _bus_errors(f"creating the rootfs of container {cid}"):
            return rootfs.create(self.layout, cid, chain_ids, args.mount_label or None,
                                 ctx.deadline, args.idmap)

    def remove_rootfs(self, ctx: OpContext, args: RemoveRootfs) -> RemovedRootfs:
        cid = check_container_id(args.container_id)
        with _bus_errors(f"removing the rootfs of container {cid}"):
            return rootfs.remove(self.layout, cid, ctx.deadline)

    def image_fs_info(self, ctx: OpContext, args: Empty) -> ImageFsInfo:
        with _bus_errors("measuring the image filesystem"):
            info = fsinfo.image_fs_info(self.layout, ctx.check)
        return ImageFsInfo(response=info.SerializeToString())

    def layer_usage(self, ctx: OpContext, args: LayerUsageQuery) -> LayerUsages:
        # The supervisor asks with the ids of its own records, so a bad one
        # is its bug, refused before it becomes a path.
        ids = [check_container_id(c) for c in args.container_ids]
        with _bus_errors("reading the writable layers' usage"):
            return layer_usage.answer(self.layout, ids)

    def reconcile(self, ctx: OpContext, args: Reconcile) -> Reconciled:
        live_containers = [check_container_id(c) for c in args.live_containers]
        for chain_id in args.live_layers or ():
            digest_hex(chain_id, "each of live_layers")
        with _bus_errors("reconciling storage"):
            return reconcile.reconcile(self.layout, live_containers, args.live_layers,
                                       ctx.deadline, ctx.check)
