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

``ImageService`` is built once per worker, from the ``image`` section
(settings.py), and each op is one of its methods, named after the op's
verb. It holds what lives as long as the process: the store (opened and
swept by the first op that needs it), the HTTP transport (kept-alive
connections shared by pulls), the pull coalescer, and registries.conf and
the signature policy as parsed, each parsed again only when its files
change (filecache.py).
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
from .tls import DEFAULT_CERTS_DIRS, TlsPolicy
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
    """The image pool's settings, what it parsed from them, and its ops."""

    def __init__(self, settings: ImageSettings,
                 certs_dirs: tuple[str, ...] = DEFAULT_CERTS_DIRS) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._store: ImageStore | None = None
        # The read timeout only backs up the watchdog (which owns stalls).
        stall = settings.pull_progress_timeout
        self._transport = Transport(TlsPolicy(certs_dirs), CONNECT_TIMEOUT,
                                    stall + 30.0 if stall > 0 else 600.0)
        self._pulls: Coalescer[str] = Coalescer()
        self._registries = registries_conf.cached(settings.registries_conf)
        self._policy = PolicyLoader(settings.signature_policy)
        self._pinned = cri.pinned_patterns(settings.pinned_images, settings.pause_image)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ImageService:
        return cls(ImageSettings.from_settings(settings))

    def ops(self) -> OpTable:
        return {
            "image.pull_image": self.pull_image,
            "image.list_images": self.list_images,
            "image.image_status": self.image_status,
            "image.remove_image": self.remove_image,
            "image.resolve_image": self.resolve_image,
            "image.layer_chains": self.layer_chains,
        }

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

    def pull_image(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        name = _image_name(args)
        raw_auth = args.get("auth")
        creds = auth.credentials_from_cri(raw_auth if isinstance(raw_auth, Mapping) else None)
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
        # "stats" is podvisor's own; the supervisor strips it from the reply.
        return {"image_ref": image_id, "stats": {"bytes": puller.bytes_received,
                                                 "layers": puller.layers_fetched}}

    def layer_chains(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        """The chain ids of every stored image's layers: what must stay unpacked."""
        live: set[str] = set()
        for record in self.store().records.all():
            live.update(chain_ids(b.diff_id for b in record.layers if b.diff_id))
        return {"chain_ids": sorted(live)}

    def list_images(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        store = self.store()
        wanted = ""
        flt = args.get("filter")
        if isinstance(flt, Mapping):
            wanted = _image_name(flt, required=False)
        if wanted:
            match = lookup.find(store.records, self._registries.get(), wanted)
            records = [match.record] if match is not None else []
        else:
            records = store.records.all()
        return {"images": [cri.image_message(r, self._pinned) for r in records]}

    def image_status(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        store = self.store()
        match = lookup.find(store.records, self._registries.get(), _image_name(args))
        if match is None:
            return {"image": None, "info": {}}
        record = match.record
        info = cri.verbose_info(record, _config(store, record)) if args.get("verbose") else {}
        return {"image": cri.image_message(record, self._pinned), "info": info}

    def remove_image(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        store = self.store()
        match = lookup.find(store.records, self._registries.get(), _image_name(args))
        if match is None:
            return {}  # CRI: removing an absent image is not an error
        if match.tag is not None and store.records.untag(match.tag, match.record.id):
            return {}
        store.remove_image(match.record.id, time.sleep)
        return {}

    def resolve_image(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        store = self.store()
        conf = self._registries.get()
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


def build(settings: Mapping[str, Any]) -> OpTable:
    """The op table of one image worker (workers/cli.py calls it once)."""
    return ImageService.from_settings(settings).ops()
