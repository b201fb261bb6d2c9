"""Ops of the image pool: the CRI ImageService, minus ImageFsInfo (storage).

Every op takes the CRI request as a dict with proto field names
(``json_format.MessageToDict(request, preserving_proto_field_name=True)``)
and returns the CRI response the same way, ready for ``ParseDict``:

``image.pull_image``
    args ``{"image": {"image": ref, "annotations": {...}, ...},
    "auth": {"username", "password", "auth", "server_address",
    "identity_token", "registry_token"}?, "sandbox_config": ...?}``
    -> ``{"image_ref": "sha256:<config digest>"}``. Identical pulls in
    flight (same image and credentials) share one download. An image the
    signature policy refuses fails with UNKNOWN and a message starting
    ``SignatureValidationFailed:`` (errors.py says why); an invalid policy
    file, with FAILED_PRECONDITION naming it.
``image.list_images``
    args ``{"filter": {"image": {"image": ref}}?}`` -> ``{"images": [Image]}``
``image.image_status``
    args ``{"image": {"image": ref}, "verbose": bool?}``
    -> ``{"image": Image | None, "info": {"info": json}}``; an absent image
    is ``{"image": None, "info": {}}``, not an error (CRI).
``image.remove_image``
    args ``{"image": {"image": ref}}`` -> ``{}``. Idempotent (CRI: removing
    an absent image succeeds). By id or digest: the image and all its names
    go. By tag: only that tag goes while the image has others (docker rmi
    and CRI-O semantics); its last tag takes the image with it.
``image.resolve_image``
    args ``{"image": ref}`` -> ``{"id", "repo_tags", "repo_digests", "user",
    "config": <image config>, "layers": [{"digest", "media_type", "size",
    "diff_id", "path"}]}``; NOT_FOUND when absent. For CreateContainer and
    the storage pool's unpack.

Process state lives in one ``ImageService`` built when the table is: the
open stores (one per root, swept once per process), the HTTP transports
(kept-alive connections shared by pulls), the pull coalescer and the
policy loader (which warns once per process about a missing policy file).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from ...proto.errors import InvalidArgument, NotFound
from ...proto.layers import chain_ids
from ..base import OpContext, OpTable
from . import auth, cri, lookup, manifest, registries_conf
from .coalesce import Coalescer
from .policy import PolicyLoader
from .pull import Puller, PullOptions
from .records import ImageRecord
from .settings import ImageSettings
from .store import ImageStore
from .tls import TlsPolicy
from .transport import Transport

# Connect timeout for registries: long enough for a slow TLS handshake,
# short enough that a dead mirror gives way to the next source quickly.
CONNECT_TIMEOUT = 30.0


def _image_name(args: Mapping[str, Any], *, required: bool = True) -> str:
    spec = args.get("image")
    name = spec.get("image") if isinstance(spec, Mapping) else None
    if isinstance(name, str) and name:
        return name
    if required:
        raise InvalidArgument("image.image is required")
    return ""


class ImageService:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[tuple[str, str], ImageStore] = {}
        self._transports: dict[tuple[tuple[str, ...], float], Transport] = {}
        self._pulls: Coalescer[str] = Coalescer()
        self._policies = PolicyLoader()

    # ---- per-process resources ------------------------------------------

    def _store(self, settings: ImageSettings) -> ImageStore:
        key = (settings.root, settings.runroot)
        with self._lock:
            store = self._stores.get(key)
            if store is not None:
                return store
            store = ImageStore(settings.root, settings.runroot)
            store.open(time.sleep)
            self._stores[key] = store
            return store

    def _transport(self, settings: ImageSettings) -> Transport:
        # The read timeout only backs up the watchdog (which owns stalls).
        stall = settings.pull_progress_timeout
        read_timeout = stall + 30.0 if stall > 0 else 600.0
        key = (settings.certs_dirs, read_timeout)
        with self._lock:
            transport = self._transports.get(key)
            if transport is None:
                transport = self._transports[key] = Transport(
                    TlsPolicy(settings.certs_dirs), CONNECT_TIMEOUT, read_timeout)
            return transport

    # ---- ops ------------------------------------------------------------

    def pull_image(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        settings = ImageSettings.from_settings(ctx.settings)
        name = _image_name(args)
        raw_auth = args.get("auth")
        creds = auth.credentials_from_cri(raw_auth if isinstance(raw_auth, Mapping) else None)
        store = self._store(settings)
        conf = registries_conf.load(settings.registries_conf)
        # Read for every pull, so an edited policy applies to the next one.
        policy = self._policies.load(settings.signature_policy)
        puller = Puller(ctx, store, conf, policy, self._transport(settings), creds, PullOptions(
            stall_timeout=settings.pull_progress_timeout,
            max_parallel=settings.max_parallel_downloads,
            platform=manifest.this_platform()))
        # Credentials are part of the key (hashed, never kept in clear): a
        # pull with other credentials must not inherit an auth failure.
        key = (name, hashlib.sha256(repr(creds).encode()).hexdigest())
        image_id = self._pulls.run(key, ctx, lambda: puller.pull(name))
        # "stats" is podvisor's own; the supervisor strips it from the reply.
        return {"image_ref": image_id, "stats": {"bytes": puller.bytes_received,
                                                 "layers": puller.layers_fetched}}

    def layer_chains(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        """The chain ids of every stored image's layers: what must stay unpacked."""
        store = self._store(ImageSettings.from_settings(ctx.settings))
        live: set[str] = set()
        for record in store.records.all():
            live.update(chain_ids(b.diff_id for b in record.layers if b.diff_id))
        return {"chain_ids": sorted(live)}

    def list_images(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        settings = ImageSettings.from_settings(ctx.settings)
        store = self._store(settings)
        patterns = cri.pinned_patterns(settings.pinned_images, settings.pause_image)
        wanted = ""
        flt = args.get("filter")
        if isinstance(flt, Mapping):
            wanted = _image_name(flt, required=False)
        if wanted:
            conf = registries_conf.load(settings.registries_conf)
            match = lookup.find(store.records, conf, wanted)
            records = [match.record] if match is not None else []
        else:
            records = store.records.all()
        return {"images": [cri.image_message(r, patterns) for r in records]}

    def image_status(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        settings = ImageSettings.from_settings(ctx.settings)
        store = self._store(settings)
        conf = registries_conf.load(settings.registries_conf)
        match = lookup.find(store.records, conf, _image_name(args))
        if match is None:
            return {"image": None, "info": {}}
        record = match.record
        patterns = cri.pinned_patterns(settings.pinned_images, settings.pause_image)
        info = cri.verbose_info(record, _config(store, record)) if args.get("verbose") else {}
        return {"image": cri.image_message(record, patterns), "info": info}

    def remove_image(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        settings = ImageSettings.from_settings(ctx.settings)
        store = self._store(settings)
        conf = registries_conf.load(settings.registries_conf)
        match = lookup.find(store.records, conf, _image_name(args))
        if match is None:
            return {}  # CRI: removing an absent image is not an error
        if match.tag is not None and store.records.untag(match.tag, match.record.id):
            return {}
        store.remove_image(match.record.id, time.sleep)
        return {}

    def resolve_image(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        settings = ImageSettings.from_settings(ctx.settings)
        store = self._store(settings)
        conf = registries_conf.load(settings.registries_conf)
        name = args.get("image")
        if not isinstance(name, str) or not name:
            raise InvalidArgument("image is required")
        match = lookup.find(store.records, conf, name)
        if match is None:
            raise NotFound(f"image {name} is not present on this node")
        record = match.record
        return {
            "id": record.id,
            "repo_tags": list(record.repo_tags),
            "repo_digests": cri.ordered_digests(record),
            "user": record.user,
            "config": _config(store, record),
            "layers": [{"digest": b.digest, "media_type": b.media_type, "size": b.size,
                        "diff_id": b.diff_id, "path": store.blobs.path(b.digest)}
                       for b in record.layers],
        }


def _config(store: ImageStore, record: ImageRecord) -> dict[str, Any] | None:
    try:
        data = json.loads(store.blobs.read(record.id))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def make_ops() -> OpTable:
    """Build the op table around a fresh ImageService."""
    service = ImageService()
    return {
        "image.pull_image": service.pull_image,
        "image.list_images": service.list_images,
        "image.image_status": service.image_status,
        "image.remove_image": service.remove_image,
        "image.resolve_image": service.resolve_image,
        "image.layer_chains": service.layer_chains,
    }


OPS: OpTable = make_ops()
