"""Build OCI and Docker images from static busybox, and push them over HTTP.

Everything is made in memory and deterministic (fixed mtimes, sorted
entries, gzip without a timestamp), so a rebuilt image has the same
digests. ``Pusher`` speaks the push half of the distribution API
(monolithic blob upload, manifest PUT) with Basic or Bearer auth, so tests
can fill the real registry without any other tool.

Signatures are made as cosign makes them (``SigningKey``, ``payload``,
``Pusher.push_signatures``): a simple-signing payload blob per signature,
its base64 signature in the layer annotation, all in an OCI manifest at
the tag ``sha256-<hex of the signed manifest digest>.sig``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import ssl
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import zstandard
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

BUSYBOX = "/usr/bin/busybox"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = {"none": "application/vnd.oci.image.layer.v1.tar",
             "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
             "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
COSIGN_SIGNATURE = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data),
                **extra}


@dataclass(frozen=True)
class Image:
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.config.digest


@dataclass(frozen=True)
class Index:
    index: Blob
    images: tuple[Image, ...]


# ---- layers -----------------------------------------------------------------


@dataclass
class Layer:
    """Tar entries, added in order; ``tar()`` gives the uncompressed layer."""

    entries: list[tuple[tarfile.TarInfo, bytes | None]] = field(default_factory=list)

    def dir(self, path: str, mode: int = 0o755) -> Layer:
        info = tarfile.TarInfo(path)
        info.type, info.mode = tarfile.DIRTYPE, mode
        self.entries.append((info, None))
        return self

    def file(self, path: str, data: bytes, mode: int = 0o644) -> Layer:
        info = tarfile.TarInfo(path)
        info.size, info.mode = len(data), mode
        self.entries.append((info, data))
        return self

    def symlink(self, path: str, target: str) -> Layer:
        info = tarfile.TarInfo(path)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        self.entries.append((info, None))
        return self

    def whiteout(self, path: str) -> Layer:
        head, _, name = path.rpartition("/")
        return self.file(f"{head}/.wh.{name}" if head else f".wh.{name}", b"")

    def tar(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in self.entries:
                info.mtime = 0
                info.uname = info.gname = "root"
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return out.getvalue()


def busybox_layer(applets: Iterable[str] = ("sh", "ls", "cat", "echo", "true")) -> Layer:
    with open(BUSYBOX, "rb") as f:
        binary = f.read()
    layer = Layer().dir("bin").file("bin/busybox", binary, 0o755)
    for applet in applets:
        layer.symlink(f"bin/{applet}", "busybox")
    return layer.dir("etc").file("etc/hostname", b"podvisor-test\n")


def random_layer(size: int, name: str = "data/random.bin") -> Layer:
    return Layer().dir(name.rsplit("/", 1)[0]).file(name, os.urandom(size))


def compress(tar: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(tar, compresslevel=6, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(tar)
    if kind == "none":
        return tar
    raise ValueError(kind)


# ---- images -----------------------------------------------------------------


def build_image(layers: Iterable[Layer | tuple[Layer, str]], *, arch: str = "amd64",
                variant: str = "", user: str = "", docker: bool = False,
                labels: dict[str, str] | None = None,
                cmd: list[str] | None = None) -> Image:
    """An image of ``layers`` (gzip unless given as (layer, compression))."""
    blobs, diff_ids = [], []
    for item in layers:
        layer, kind = item if isinstance(item, tuple) else (item, "gzip")
        tar = layer.tar()
        diff_ids.append(sha256(tar))
        media_type = DOCKER_LAYER if docker else OCI_LAYER[kind]
        if docker and kind != "gzip":
            raise ValueError("Docker schema 2 layers are gzip here")
        blobs.append(Blob(media_type, compress(tar, kind)))
    config_doc: dict[str, Any] = {
        "architecture": arch, "os": "linux",
        "config": {"Cmd": cmd or ["/bin/sh"], "Env": ["PATH=/bin"], "User": user,
                   "Labels": labels or {}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "podvisor tests"} for _ in diff_ids],
    }
    if variant:
        config_doc["variant"] = variant
    config = Blob(DOCKER_CONFIG if docker else OCI_CONFIG,
                  json.dumps(config_doc, sort_keys=True).encode())
    manifest_doc = {"schemaVersion": 2,
                    "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
                    "config": config.descriptor(),
                    "layers": [b.descriptor() for b in blobs]}
    manifest = Blob(DOCKER_MANIFEST if docker else OCI_MANIFEST,
                    json.dumps(manifest_doc, indent=2).encode())
    return Image(manifest, config, tuple(blobs), tuple(diff_ids))


def build_index(platforms: Iterable[tuple[Image, str, str]], *, docker: bool = False) -> Index:
    """An index over (image, arch, variant) entries."""
    entries, images = [], []
    for image, arch, variant in platforms:
        platform = {"os": "linux", "architecture": arch}
        if variant:
            platform["variant"] = variant
        entries.append(image.manifest.descriptor(platform=platform))
        images.append(image)
    media_type = DOCKER_LIST if docker else OCI_INDEX
    doc = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    return Index(Blob(media_type, json.dumps(doc, indent=2).encode()), tuple(images))


# ---- pushing ----------------------------------------------------------------


class Pusher:
    """Pushes to one registry host; handles Basic and Bearer challenges."""

    def __init__(self, host: str, *, scheme: str = "http", username: str = "",
                 password: str = "", ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.scheme = scheme
        self._basic = base64.b64encode(f"{username}:{password}".encode()).decode() \
            if username else ""
        self._ssl = ssl_context
        self._authorization: dict[str, str] = {}

    def _conn(self, host: str, scheme: str) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(host, timeout=30, context=self._ssl)
        return http.client.HTTPConnection(host, timeout=30)

    def _request(self, method: str, url: str, repo: str, headers: dict[str, str] | None = None,
                 body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        for _ in range(2):
            all_headers = dict(headers or {})
            if repo in self._authorization:
                all_headers["Authorization"] = self._authorization[repo]
            parts = urlsplit(url)
            conn = self._conn(parts.netloc, parts.scheme)
            try:
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                conn.request(method, target, body=body, headers=all_headers)
                response = conn.getresponse()
                data = response.read()
                got = {k.lower(): v for k, v in response.getheaders()}
            finally:
                conn.close()
            if response.status != 401 or repo in self._authorization:
                return response.status, got, data
            self._authorization[repo] = self._answer(got.get("www-authenticate", ""), repo)
        return response.status, got, data

    def _answer(self, challenge: str, repo: str) -> str:
        if challenge.startswith("Basic"):
            return f"Basic {self._basic}"
        params = dict(part.split("=", 1) for part in challenge[len("Bearer "):].split(","))
        params = {k: v.strip('"') for k, v in params.items()}
        query = urlencode({"service": params.get("service", ""),
                           "scope": f"repository:{repo}:pull,push"})
        parts = urlsplit(params["realm"])
        conn = self._conn(parts.netloc, parts.scheme)
        try:
            conn.request("GET", f"{parts.path}?{query}",
                         headers={"Authorization": f"Basic {self._basic}"} if self._basic else {})
            response = conn.getresponse()
            token = json.loads(response.read())["token"]
        finally:
            conn.close()
        return f"Bearer {token}"

    def push_blob(self, repo: str, blob: Blob) -> None:
        base = f"{self.scheme}://{self.host}"
        status, _, _ = self._request("HEAD", f"{base}/v2/{repo}/blobs/{blob.digest}", repo)
        if status == 200:
            return
        status, headers, data = self._request("POST", f"{base}/v2/{repo}/blobs/uploads/", repo)
        assert status == 202, (status, data)
        location = headers["location"]
        if location.startswith("/"):
            location = base + location
        parts = urlsplit(location)
        query = parse_qs(parts.query)
        query["digest"] = [blob.digest]
        url = f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query, doseq=True)}"
        status, _, data = self._request("PUT", url, repo,
                                        {"Content-Type": "application/octet-stream"}, blob.data)
        assert status == 201, (status, data)

    def push_manifest(self, repo: str, reference: str, blob: Blob) -> None:
        url = f"{self.scheme}://{self.host}/v2/{repo}/manifests/{reference}"
        status, _, data = self._request("PUT", url, repo, {"Content-Type": blob.media_type},
                                        blob.data)
        assert status == 201, (status, data)

    def push_image(self, repo: str, tag: str, image: Image) -> str:
        """Push ``image`` as ``repo:tag``; return its manifest digest."""
        for blob in (*image.layers, image.config):
            self.push_blob(repo, blob)
        self.push_manifest(repo, tag, image.manifest)
        return image.manifest.digest

    def push_signatures(self, repo: str, manifest_digest: str,
                        signatures: Iterable[tuple[bytes, str]]) -> str:
        """Attach (payload, base64 signature) pairs to ``manifest_digest``
        in ``repo``; return the tag they went to."""
        manifest, config, layers = signature_manifest(list(signatures))
        for blob in (*layers, config):
            self.push_blob(repo, blob)
        tag = signature_tag(manifest_digest)
        self.push_manifest(repo, tag, manifest)
        return tag

    def push_index(self, repo: str, tag: str, index: Index) -> str:
        for image in index.images:
            for blob in (*image.layers, image.config):
                self.push_blob(repo, blob)
            self.push_manifest(repo, image.manifest.digest, image.manifest)
        self.push_manifest(repo, tag, index.index)
        return index.index.digest


# ---- signatures (cosign's format) ---------------------------------------------


class SigningKey:
    """A key pair made for this test run: ECDSA P-256 (cosign's default),
    RSA 2048 or Ed25519, signing as sigstore does (SHA-256)."""

    def __init__(self, kind: str = "ecdsa") -> None:
        self.kind = kind
        self._key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        if kind == "ecdsa":
            self._key = ec.generate_private_key(ec.SECP256R1())
        elif kind == "rsa":
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kind == "ed25519":
            self._key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(kind)

    def public_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, payload: bytes) -> str:
        """The base64 signature cosign would put in the layer annotation."""
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            raw = key.sign(payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPrivateKey):
            raw = key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            raw = key.sign(payload)
        return base64.b64encode(raw).decode()


def payload(docker_reference: str, manifest_digest: str, kind: str = COSIGN_TYPE) -> bytes:
    """A simple-signing payload as cosign writes it."""
    return json.dumps({"critical": {"identity": {"docker-reference": docker_reference},
                                    "image": {"docker-manifest-digest": manifest_digest},
                                    "type": kind},
                       "optional": None}).encode()


def signature_tag(manifest_digest: str) -> str:
    algorithm, _, encoded = manifest_digest.partition(":")
    return f"{algorithm}-{encoded}.sig"


def signature_manifest(signatures: Iterable[tuple[bytes, str]]) -> tuple[Blob, Blob, list[Blob]]:
    """(manifest, config, payload blobs) for (payload, base64 signature) pairs."""
    layers = [Blob(COSIGN_SIGNATURE, data) for data, _ in signatures]
    config = Blob(OCI_CONFIG, json.dumps({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]}}).encode())
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
           "layers": [blob.descriptor(annotations={COSIGN_ANNOTATION: signature})
                      for blob, (_, signature) in zip(layers, signatures, strict=True)]}
    return Blob(OCI_MANIFEST, json.dumps(doc).encode()), config, layers
