"""One image pull: name -> sources -> manifest -> platform -> blobs -> record.

Steps
    1. Short names become candidates through registries.conf (aliases,
       search registries, short-name mode); each candidate is tried in
       order until one is found.
    2. The signature policy's scope for the name is found (trust.py): a
       ``reject`` refuses the pull here, before any network. A digest
       reference already recorded is then answered without the network,
       unless the policy wants signatures checked: those are checked on
       every pull, as CRI-O does, even of an image already present.
    3. The per-reference flock is taken; if another worker recorded this tag
       while we waited, its result is ours (cross-worker coalescing).
    4. Sources (mirrors, then the primary) are tried in order, each in its
       own attempt with its own Watchdog: any failure but the caller's own
       cancellation moves on to the next source; the error reported names
       every source's failure. A source whose image the policy refuses is
       such a failure: the next source's image is checked on its own.
    5. In an attempt: the manifest (or index, then this platform's manifest)
       is fetched and verified against its digest, then its signatures are
       checked against the policy, from the same source, before any blob.
       When the image id (the config digest) is already recorded, only
       names are added: a re-pull downloads no blob. Otherwise config and
       layers are fetched under a lease, layers in parallel, each distinct
       blob once, then the image is recorded in one transaction.

Invariants
    - Nothing is recorded before every blob is verified and in the store.
    - Nothing is stored for an image the signature policy refuses: the
      manifests are held in memory until the policy has accepted them.
    - A failed attempt releases its lease and collects the blobs it brought
      in, so a failed pull leaves nothing behind (blobs another image uses
      stay). That cleanup ignores the caller's cancellation: it must finish.
    - Layers stay compressed and verified in the store; each layer's
      diff_id and media type are recorded for the storage pool to unpack
      (and verify the diff_id) later.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from ...proto.errors import BusError, Cancelled, DeadlineExceeded, Internal, InvalidArgument
from ..base import OpContext
from . import manifest, reference, registries_conf
from .auth import Credentials
from .errors import DataLoss
from .leases import Lease
from .manifest import Descriptor, Index, Manifest, Platform
from .policy import Policy
from .records import BlobRecord, NewImage
from .reference import Reference
from .registries_conf import PullSource, RegistriesConf
from .registry import RegistryClient
from .store import ImageStore
from .transport import Transport
from .trust import Document, TrustCheck
from .watchdog import Watchdog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullOptions:
    stall_timeout: float
    max_parallel: int
    platform: Platform


@dataclass(frozen=True)
class _Resolved:
    """What a manifest fetch established, before any blob is downloaded."""

    manifest: Manifest
    manifest_digest: str
    top_digest: str
    index_digest: str | None
    documents: tuple[tuple[str, str, bytes], ...]  # (role, media type, body) by digest


class Puller:
    """Pulls for one PullImage call (see module docstring)."""

    def __init__(self, ctx: OpContext, store: ImageStore, conf: RegistriesConf,
                 policy: Policy, transport: Transport, credentials: Credentials | None,
                 options: PullOptions) -> None:
        self._ctx = ctx
        self._store = store
        self._conf = conf
        self._policy = policy
        self._transport = transport
        self._creds = credentials
        self._options = options
        # What this call fetched, for the supervisor's pull metrics.
        self.bytes_received = 0
        self.layers_fetched = 0

    # ---- waiting ------------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        """Wait for a lock while honouring the caller's deadline and cancel."""
        self._ctx.check()
        self._ctx.cancelled.wait(min(seconds, max(self._ctx.remaining(), 0.0)))
        self._ctx.check()

    @staticmethod
    def _wait_uncancellable(seconds: float) -> None:
        time.sleep(seconds)

    # ---- entry ------------------------------------------------------------

    def pull(self, text: str) -> str:
        """Pull the image named ``text``; return its image id."""
        ref = reference.parse(text)
        candidates = registries_conf.pull_candidates(self._conf, ref)
        failures: list[tuple[str, BusError]] = []
        for candidate in candidates:
            try:
                return self._pull_name(candidate.with_default_tag())
            except (Cancelled, DeadlineExceeded):
                raise
            except BusError as exc:
                if len(candidates) == 1:
                    raise
                failures.append((str(candidate), exc))
                log.info("Short name %s: %s failed: %s", text, candidate, exc.message)
        summary = "; ".join(f"{name}: {exc.message}" for name, exc in failures)
        last = failures[-1][1]
        raise type(last)(f"short name {text} could not be pulled from any search registry: "
                         f"{summary}", code=last.code)

    def _pull_name(self, ref: Reference) -> str:
        # The policy's first stage: a "reject" scope, an unsupported
        # requirement or an unreadable key fails here, before any network.
        check = TrustCheck(self._policy, ref)
        if ref.digest is not None and not check.needs_signatures:
            present = self._store.records.image_for(ref.digested())
            if present is not None:
                log.info("Image %s is already present as %s", ref, present)
                return present
        sources = registries_conf.pull_sources(self._conf, ref)
        started = time.time()
        with self._store.ref_lock(str(ref), self._ctx.deadline, self._wait):
            done = self._pulled_meanwhile(ref, started, check)
            if done is not None:
                return done
            failures: list[tuple[PullSource, BusError]] = []
            for source in sources:
                try:
                    return self._attempt(ref, source, check)
                except (Cancelled, DeadlineExceeded):
                    raise
                except BusError as exc:
                    failures.append((source, exc))
                    log.warning("Pulling %s from %s failed: %s", ref, source.reference.domain,
                                exc.message)
            raise _combine(ref, failures)

    def _pulled_meanwhile(self, ref: Reference, started: float,
                          check: TrustCheck) -> str | None:
        """The image, if another worker pulled ``ref`` while we waited."""
        records = self._store.records
        if ref.digest is not None:
            # A recorded digest may predate this pull (and the policy now in
            # force): only a tag updated since we started proves a fresh check.
            return None if check.needs_signatures else records.image_for(ref.digested())
        updated = records.name_updated_at(ref.tagged())
        if updated is not None and updated >= started:
            return records.image_for(ref.tagged())
        return None

    # ---- one source ---------------------------------------------------------

    def _credentials_for(self, source: PullSource) -> Credentials | None:
        creds = self._creds
        if creds is None:
            return None
        host = source.reference.domain
        if creds.server_address:
            return creds if creds.matches_host(host) else None
        # Credentials the kubelet chose for the image's registry are not
        # handed to a mirror unless server_address names that mirror.
        return None if source.mirror else creds

    def _attempt(self, ref: Reference, source: PullSource, check: TrustCheck) -> str:
        physical = source.reference
        label = f"{ref}" if physical == ref else f"{ref} (from {physical})"
        begun = time.monotonic()
        with Watchdog(self._ctx, self._options.stall_timeout, label) as watchdog:
            client = RegistryClient(self._transport, physical.domain, insecure=source.insecure,
                                    credentials=self._credentials_for(source), watchdog=watchdog)
            resolved = self._resolve(client, physical)
            if check.needs_signatures:
                # Before any blob, and before "already present": a present
                # image is still refused when its signatures no longer pass.
                check.verify(client, physical.path,
                             [Document(digest, body) for digest, _, body in resolved.documents])
            image_id = resolved.manifest.config.digest
            names = self._names(ref, resolved)
            if self._store.records.get(image_id) is not None \
                    and self._store.records.add_names(image_id, names):
                log.info("Image %s is already present as %s; recorded its names", ref, image_id)
                return image_id
            self._download(client, physical, resolved, names, watchdog)
        self.bytes_received += watchdog.bytes
        self.layers_fetched += len(resolved.manifest.layers)
        log.info("Pulled %s as %s: %d bytes in %.1fs", label, image_id, watchdog.bytes,
                 time.monotonic() - begun)
        return image_id

    @staticmethod
    def _names(ref: Reference, resolved: _Resolved) -> list[tuple[str, str]]:
        names = []
        # A reference with both a tag and a digest is pulled by digest; the
        # tag was not what we resolved, so it is not recorded.
        if ref.digest is None and ref.tag is not None:
            names.append((ref.tagged(), "tag"))
        names.append((ref.digested(resolved.top_digest), "digest"))
        if resolved.manifest_digest != resolved.top_digest:
            names.append((ref.digested(resolved.manifest_digest), "digest"))
        return names

    def _resolve(self, client: RegistryClient, physical: Reference) -> _Resolved:
        repo = physical.path
        version = physical.digest or physical.tag or reference.DEFAULT_TAG
        top = client.get_manifest(repo, version, manifest.ACCEPT, manifest.MAX_MANIFEST_BYTES)
        top_digest = _verify(top.body, physical.digest, f"manifest {physical}", client.host)
        if physical.digest is None and top.digest_header.startswith("sha256:") \
                and top.digest_header != top_digest:
            raise DataLoss(f"manifest {physical} from {client.host} hashes to {top_digest} but "
                           f"the registry says {top.digest_header}")
        parsed = manifest.parse(top.body, top.media_type)
        if isinstance(parsed, Manifest):
            return _Resolved(parsed, top_digest, top_digest, None,
                             ((top_digest, parsed.media_type, top.body),))
        entry = manifest.select(parsed, self._options.platform)
        child = client.get_manifest(repo, entry.digest, manifest.ACCEPT,
                                    manifest.MAX_MANIFEST_BYTES)
        _verify(child.body, entry.digest, f"manifest {physical.name}@{entry.digest}",
                client.host)
        chosen = manifest.parse(child.body, child.media_type or entry.media_type)
        if isinstance(chosen, Index):
            raise InvalidArgument(f"index {physical} points to another index for "
                                  f"{self._options.platform}; nested indexes are not supported")
        return _Resolved(chosen, entry.digest, top_digest, top_digest,
                         ((top_digest, parsed.media_type, top.body),
                          (entry.digest, chosen.media_type, child.body)))

    # ---- blobs ----------------------------------------------------------------

    def _download(self, client: RegistryClient, physical: Reference, resolved: _Resolved,
                  names: list[tuple[str, str]], watchdog: Watchdog) -> None:
        store = self._store
        lease = store.lease()
        failed = True
        try:
            for digest, _, body in resolved.documents:
                if not store.reserve(lease, digest, self._ctx.deadline, self._wait):
                    store.blobs.put(digest, body, client.host)
            config_desc = resolved.manifest.config
            config_body = self._config(client, physical, config_desc, lease)
            config = manifest.parse_config(config_body)
            manifest.check_config_platform(config, self._options.platform)
            diff_ids = manifest.config_diff_ids(config)
            layers = resolved.manifest.layers
            if len(diff_ids) != len(layers):
                raise InvalidArgument(f"image {physical} has {len(layers)} layers but its "
                                      f"config lists {len(diff_ids)} diff_ids")
            self._fetch_layers(client, physical.path, layers, lease, watchdog)
            image = NewImage(
                id=config_desc.digest, manifest_digest=resolved.manifest_digest,
                manifest_media_type=resolved.manifest.media_type,
                index_digest=resolved.index_digest, config_media_type=config_desc.media_type,
                user=manifest.config_user(config), blobs=self._blob_records(resolved, diff_ids))
            store.records.add(image, names)
            failed = False
        finally:
            store.release_lease(lease, failed=failed, wait=self._wait_uncancellable)

    @staticmethod
    def _blob_records(resolved: _Resolved, diff_ids: Sequence[str]) -> tuple[BlobRecord, ...]:
        documents = [BlobRecord("index" if digest == resolved.index_digest else "manifest",
                                digest, media_type, len(body))
                     for digest, media_type, body in resolved.documents]
        config = resolved.manifest.config
        layers = [BlobRecord("layer", layer.digest, layer.media_type, layer.size, diff_id)
                  for layer, diff_id in zip(resolved.manifest.layers, diff_ids, strict=True)]
        return (*documents, BlobRecord("config", config.digest, config.media_type, config.size),
                *layers)

    def _config(self, client: RegistryClient, physical: Reference, desc: Descriptor,
                lease: Lease) -> bytes:
        if self._store.reserve(lease, desc.digest, self._ctx.deadline, self._wait):
            return self._store.blobs.read(desc.digest)
        if desc.size > manifest.MAX_CONFIG_BYTES:
            raise InvalidArgument(f"image config {desc.digest} of {physical} is {desc.size} "
                                  f"bytes, more than the {manifest.MAX_CONFIG_BYTES} allowed")
        body = client.get_blob(physical.path, desc.digest, manifest.MAX_CONFIG_BYTES)
        self._store.blobs.put(desc.digest, body, client.host)
        return body

    def _fetch_layers(self, client: RegistryClient, repo: str, layers: Sequence[Descriptor],
                      lease: Lease, watchdog: Watchdog) -> None:
        unique = list({layer.digest: layer for layer in layers}.values())
        if not unique:
            return
        workers = min(len(unique), self._options.max_parallel)
        with ThreadPoolExecutor(max_workers=workers,
                                thread_name_prefix="layer-download") as pool:
            futures: list[Future[None]] = [
                pool.submit(contextvars.copy_context().run, self._fetch_layer, client, repo,
                            layer, lease, watchdog)
                for layer in unique]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            first = next((f.exception() for f in futures if f in done and f.exception()), None)
            if first is not None:
                # Stop the siblings now rather than let them finish downloads
                # that will be thrown away.
                watchdog.abort(first if isinstance(first, BusError)
                               else DataLoss(f"layer download failed: {first}"))
                wait(futures)
                raise first

    def _fetch_layer(self, client: RegistryClient, repo: str, layer: Descriptor, lease: Lease,
                     watchdog: Watchdog) -> None:
        store = self._store
        if store.reserve(lease, layer.digest, self._ctx.deadline, self._wait):
            return

        def wait_for_other(seconds: float) -> None:
            # Another pull is downloading this blob under its own watchdog;
            # waiting for it is not a stall of ours.
            watchdog.progress(0)
            watchdog.sleep(seconds)

        with store.blob_lock(layer.digest, self._ctx.deadline, wait_for_other):
            try:
                if store.blobs.exists(layer.digest):
                    return
                with store.blobs.ingest(layer.digest, layer.size, client.host) as ingest:
                    client.fetch_blob(repo, layer.digest, ingest)
                    ingest.commit()
            except OSError as exc:
                # Network errors were mapped by the client; this is local disk.
                raise Internal(f"storing layer {layer.digest} in {store.blobs.blobs_dir} "
                               f"failed: {exc.strerror or exc}") from None


def _verify(body: bytes, expected: str | None, what: str, host: str) -> str:
    """Digest of ``body``; DataLoss when it is not ``expected``."""
    algorithm = expected.split(":", 1)[0] if expected else "sha256"
    actual = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
    if expected is not None and actual != expected:
        raise DataLoss(f"{what} from {host} is corrupt: its content hashes to {actual}")
    return actual


def _combine(ref: Reference, failures: list[tuple[PullSource, BusError]]) -> BusError:
    if len(failures) == 1:
        return failures[0][1]
    parts = "; ".join(
        f"{'mirror ' if source.mirror else ''}{source.reference.domain}: {exc.message}"
        for source, exc in failures)
    last = failures[-1][1]
    # The primary registry's failure decides the code: it is the one the
    # kubelet would have seen without mirrors.
    return type(last)(f"pulling {ref} failed from every source: {parts}", code=last.code)

