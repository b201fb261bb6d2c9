"""Ops of the image pool: the CRI ImageService, minus ImageFsInfo (storage),
and what CreateContainer and the layer bookkeeping need of the store.

Each op's contract (arguments, result, errors) is declared in
proto/image_ops.py; the CRI ones take the request and answer the response
as serialized protobuf, built here (cri.py).

``ImageService`` is built once per worker, from the ``image`` section
(settings.py), and each op is one of its methods, named after the op's
verb. It holds what lives as long as the process: the store (opened and
swept by the first op that needs it), the HTTP transport (kept-alive
connections shared by pulls, and the proxies of the worker's environment,
read once: the supervisor passes its own environment on, so the proxy
variables of podvisor's systemd unit reach every pull), the pull coalescer, and registries.conf and
the signature policy as parsed, each parsed again only when its files
change (filecache.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from ...proto import api_pb2 as api
from ...proto import image_ops
from ...proto.contract import Empty
from ...proto.errors import Internal, InvalidArgument, NotFound
from ...proto.layers import chain_ids
from ..base import OpContext, OpTable, Served, serve
from . import auth, cri, lookup, manifest, registries_conf
from .coalesce import Coalescer
from .errors import DataLoss
from .policy import PolicyLoader
from .proxy import ProxyEnvironment
from .pull import Puller, PullOptions
from .records import BlobRecord, ImageRecord
from .settings import ImageSettings
from .store import ImageStore
from .tls import DEFAULT_CERTS_DIRS, TlsPolicy
from .transport import Transport

# Connect timeout for registries: long enough for a slow TLS handshake,
# short enough that a dead mirror gives way to the next source quickly.
CONNECT_TIMEOUT = 30.0


def _image_name(spec: api.ImageSpec) -> str:
    if not spec.image:
        raise InvalidArgument("image.image is required")
    return spec.image


class ImageService:
    """The image pool's settings, what it parsed from them, and its ops."""

    def __init__(self, settings: ImageSettings,
                 certs_dirs: tuple[str, ...] = DEFAULT_CERTS_DIRS,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._store: ImageStore | None = None
        # The read timeout only backs up the watchdog (which owns stalls).
        stall = settings.pull_progress_timeout
        self._transport = Transport(TlsPolicy(certs_dirs), ProxyEnvironment.from_environ(environ),
                                    CONNECT_TIMEOUT, stall + 30.0 if stall > 0 else 600.0)
        self._pulls: Coalescer[str] = Coalescer()
        self._registries = registries_conf.cached(settings.registries_conf)
        self._policy = PolicyLoader(settings.signature_policy)
        self._pinned = cri.pinned_patterns(settings.pinned_images, settings.pause_image)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ImageService:
        return cls(ImageSettings.from_settings(settings))

    def ops(self) -> dict[str, Served[Any, Any]]:
        return serve(
            Served(image_ops.PULL_IMAGE, self.pull_image),
            Served(image_ops.LIST_IMAGES, self.list_images),
            Served(image_ops.IMAGE_STATUS, self.image_status),
            Served(image_ops.REMOVE_IMAGE, self.remove_image),
            Served(image_ops.RESOLVE_IMAGE, self.resolve_image),
            Served(image_ops.LAYER_CHAINS, self.layer_chains),
        )

    def store(self) -> ImageStore:
        """The store, opened by the first op: opening sweeps what a killed
        worker left, which may wait on its locks, so not before READY."""
        with self._lock:
            if self._store is None:
                store = ImageStore(self.settings.root, self.settings.runroot)
                store.open(time.sleep)
                self._store = store
            return self._store

    # ---- ops ------------------------------------------------------------

    def pull_image(self, ctx: OpContext, args: image_ops.PullImage) -> image_ops.ImagePulled:
        request = cri.parse(api.PullImageRequest, args.request)
        name = _image_name(request.image)
        creds = auth.credentials_from_cri(request.auth if request.HasField("auth") else None)
        store = self.store()
        puller = Puller(ctx, store, self._registries.get(), self._policy.load(),
                        self._transport, creds, PullOptions(
                            stall_timeout=self.settings.pull_progress_timeout,
                            max_parallel=self.settings.max_parallel_downloads,
                            platform=manifest.this_platform()))
        # Credentials are part of the key (hashed, never kept in clear): a
        # pull with other credentials must not inherit an auth failure.
        key = (name, hashlib.sha256(repr(creds).encode()).hexdigest())
        image_id = self._pulls.run(key, ctx, lambda: puller.pull(name))
        return image_ops.ImagePulled(
            response=api.PullImageResponse(image_ref=image_id).SerializeToString(),
            bytes_received=puller.bytes_received, layers_fetched=puller.layers_fetched)

    def layer_chains(self, ctx: OpContext, args: Empty) -> image_ops.LayerChains:
        live: set[str] = set()
        for record in self.store().records.all():
            live.update(chain_ids(b.diff_id for b in record.layers if b.diff_id))
        return image_ops.LayerChains(chain_ids=sorted(live))

    def list_images(self, ctx: OpContext, args: image_ops.ListImages) -> image_ops.ImagesListed:
        request = cri.parse(api.ListImagesRequest, args.request)
        store = self.store()
        wanted = request.filter.image.image
        if wanted:
            match = lookup.find(store.records, self._registries.get(), wanted)
            records = [match.record] if match is not None else []
        else:
            records = store.records.all()
        response = api.ListImagesResponse(
            images=[cri.image_message(r, self._pinned) for r in records])
        return image_ops.ImagesListed(response=response.SerializeToString())

    def image_status(self, ctx: OpContext, args: image_ops.ImageStatus
                     ) -> image_ops.ImageStatusAnswer:
        request = cri.parse(api.ImageStatusRequest, args.request)
        store = self.store()
        match = lookup.find(store.records, self._registries.get(), _image_name(request.image))
        response = api.ImageStatusResponse()
        if match is not None:  # CRI: an absent image is no image, not an error
            record = match.record
            response.image.CopyFrom(cri.image_message(record, self._pinned))
            if request.verbose:
                response.info.update(cri.verbose_info(record, _config(store, record)))
        return image_ops.ImageStatusAnswer(response=response.SerializeToString())

    def remove_image(self, ctx: OpContext, args: image_ops.RemoveImage) -> image_ops.ImageRemoved:
        request = cri.parse(api.RemoveImageRequest, args.request)
        done = image_ops.ImageRemoved(response=api.RemoveImageResponse().SerializeToString())
        store = self.store()
        match = lookup.find(store.records, self._registries.get(), _image_name(request.image))
        if match is None:
            return done  # CRI: removing an absent image is not an error
        if match.tag is not None and store.records.untag(match.tag, match.record.id):
            return done
        store.remove_image(match.record.id, time.sleep)
        return done

    def resolve_image(self, ctx: OpContext, args: image_ops.ResolveImage
                      ) -> image_ops.ResolvedImage:
        store = self.store()
        if not args.image:
            raise InvalidArgument("image is required")
        match = lookup.find(store.records, self._registries.get(), args.image)
        if match is None:
            raise NotFound(f"image {args.image} is not present on this node")
        record = match.record
        config = _config(store, record)
        if config is None:
            raise DataLoss(f"the config of image {record.id} is missing or corrupt; "
                           "remove the image and pull it again")
        return image_ops.ResolvedImage(
            id=record.id, repo_tags=list(record.repo_tags),
            repo_digests=cri.ordered_digests(record), user=record.user, config=config,
            layers=[_layer_ref(store, b) for b in record.layers])


def _layer_ref(store: ImageStore, blob: BlobRecord) -> image_ops.LayerRef:
    if blob.diff_id is None:  # a pull records every layer with its diff_id
        raise Internal(f"layer {blob.digest} is stored without a diff_id")
    return image_ops.LayerRef(digest=blob.digest, media_type=blob.media_type,
                              size=blob.size, diff_id=blob.diff_id,
                              path=store.blobs.path(blob.digest))


def _config(store: ImageStore, record: ImageRecord) -> dict[str, Any] | None:
    try:
        data = json.loads(store.blobs.read(record.id))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def build(settings: Mapping[str, Any]) -> OpTable:
    """The op table of one image worker (workers/cli.py calls it once)."""
    return ImageService.from_settings(settings).ops()
