"""Manifests, indexes and image configs: media types, parsing, platforms.

Understood: OCI image manifest and index, Docker schema 2 manifest and
manifest list. Docker schema 1 is refused with a message saying so (it is
deprecated, unsigned content and registries convert it on the fly).

Invariants:
- ``parse`` returns a structurally valid ``Manifest`` or ``Index`` or raises
  ``InvalidArgument`` naming what is wrong; digests in descriptors are
  validated so they are safe to use as store paths.
- A manifest's media type comes from its own ``mediaType`` field when it
  has one; the Content-Type header only fills the gap (some registries send
  ``application/json``). The two may not disagree.
- Only images are accepted: a config that is not an OCI or Docker image
  config (an artifact: Helm chart, signature, SBOM) is refused.
- Platform choice is linux/<this machine's arch>, with the variant rules of
  containerd's default matcher in simplified form: arm64 treats "" and "v8"
  alike; 32-bit arm accepts variants up to its own, best first; amd64 takes
  only the baseline ("" or "v1").
"""

from __future__ import annotations

import json
import platform as pyplatform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...proto.errors import FailedPrecondition, InvalidArgument, NotFound
from .reference import validate_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
# What a pull asks for, best first.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

# Layer media type -> compression. The nondistributable ("foreign") types
# are deprecated; when a registry serves them they are plain blobs.
LAYER_COMPRESSION: Mapping[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}

# Manifests and configs are small; these bound what is read into memory
# (containers/image uses the same 4 MiB for manifests).
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse(body: bytes, header_type: str) -> Index | Manifest:
    """Parse a manifest or index fetched with Content-Type ``header_type``."""
    data = _json_object(body, "manifest")
    declared = data.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise InvalidArgument("manifest mediaType is not a string")
    if data.get("schemaVersion") == 1 or header_type in DOCKER_SCHEMA1:
        raise InvalidArgument("Docker schema 1 manifests are not supported; push the image "
                              "again with a current client (schema 2 or OCI)")
    if data.get("schemaVersion") != 2:
        raise InvalidArgument(f"unsupported manifest schemaVersion {data.get('schemaVersion')!r}")
    known = (*MANIFEST_TYPES, *INDEX_TYPES)
    media_type = declared or (header_type if header_type in known else "")
    if declared and header_type in known and header_type != declared:
        raise InvalidArgument(f"manifest says it is {declared} but was served as {header_type}")
    if not media_type:
        # OCI allows omitting mediaType: tell the kinds apart by shape.
        media_type = OCI_INDEX if "manifests" in data else OCI_MANIFEST
    if media_type in INDEX_TYPES:
        entries = data.get("manifests")
        if not isinstance(entries, list):
            raise InvalidArgument("index has no manifests list")
        return Index(media_type, tuple(_descriptor(e, "index entry") for e in entries))
    if media_type not in MANIFEST_TYPES:
        raise InvalidArgument(f"unsupported manifest media type {media_type!r}")
    config = _descriptor(data.get("config"), "config")
    if config.media_type not in (OCI_CONFIG, DOCKER_CONFIG):
        raise InvalidArgument(f"not a container image: its config media type is "
                              f"{config.media_type!r}")
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list):
        raise InvalidArgument("manifest has no layers list")
    layers = tuple(_descriptor(e, "layer") for e in raw_layers)
    for layer in layers:
        if layer.media_type not in LAYER_COMPRESSION:
            raise InvalidArgument(f"layer {layer.digest} has unsupported media type "
                                  f"{layer.media_type!r}")
    return Manifest(media_type, config, layers)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return data


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{what} descriptor is not an object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidArgument(f"{what} descriptor has no mediaType")
    if not isinstance(digest, str):
        raise InvalidArgument(f"{what} descriptor has no digest")
    validate_digest(digest, what=f"{what} descriptor")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{what} {digest} has an invalid size {size!r}")
    plat = raw.get("platform")
    parsed_platform = None
    if isinstance(plat, dict):
        parsed_platform = Platform(str(plat.get("os", "")), str(plat.get("architecture", "")),
                                   str(plat.get("variant", "") or ""))
    annotations = raw.get("annotations")
    return Descriptor(media_type, digest, size, parsed_platform,
                      {str(k): str(v) for k, v in annotations.items()}
                      if isinstance(annotations, dict) else {})


def parse_config(body: bytes) -> dict[str, Any]:
    """Parse an image config and check the fields a pull relies on."""
    data = _json_object(body, "image config")
    rootfs = data.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise InvalidArgument("image config has no rootfs.diff_ids")
    for diff_id in rootfs["diff_ids"]:
        if not isinstance(diff_id, str):
            raise InvalidArgument("image config has a diff_id that is not a string")
        validate_digest(diff_id, what="image config diff_id")
    return data


def config_diff_ids(config: Mapping[str, Any]) -> list[str]:
    return list(config["rootfs"]["diff_ids"])


def config_user(config: Mapping[str, Any]) -> str:
    inner = config.get("config")
    user = inner.get("User") if isinstance(inner, dict) else None
    return user if isinstance(user, str) else ""


# ---- platforms ----------------------------------------------------------

_MACHINE_ARCH = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"), "i386": ("386", ""), "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
    "mips64": ("mips64", ""), "loongarch64": ("loong64", ""),
}


def this_platform() -> Platform:
    """linux/<arch>[/<variant>] of the machine this runs on."""
    machine = pyplatform.machine()
    arch, variant = _MACHINE_ARCH.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


def _variant_rank(wanted: Platform, offered: str) -> int | None:
    """Lower is better; None when ``offered`` cannot run here."""
    if wanted.architecture == "arm64":
        return 0 if offered in ("", "v8") else None
    if wanted.architecture == "arm":
        mine = int(wanted.variant[1:]) if wanted.variant[1:].isdigit() else 7
        if offered == "":
            return 100
        if offered[:1] == "v" and offered[1:].isdigit() and int(offered[1:]) <= mine:
            return mine - int(offered[1:])
        return None
    if wanted.architecture == "amd64":
        return 0 if offered in ("", "v1") else None
    return 0 if offered == wanted.variant or offered == "" else None


def select(index: Index, wanted: Platform) -> Descriptor:
    """The index entry to run on ``wanted``; NotFound when there is none."""
    best: tuple[int, int, Descriptor] | None = None
    for position, entry in enumerate(index.manifests):
        plat = entry.platform
        if plat is None or plat.os != wanted.os or plat.architecture != wanted.architecture:
            continue
        if entry.media_type not in MANIFEST_TYPES:
            continue
        rank = _variant_rank(wanted, plat.variant)
        if rank is not None and (best is None or (rank, position) < best[:2]):
            best = (rank, position, entry)
    if best is None:
        offered = sorted({str(e.platform) for e in index.manifests if e.platform is not None})
        raise NotFound(f"no image for {wanted} in the index (it offers "
                       f"{', '.join(offered) or 'no platforms'})")
    return best[2]


def check_config_platform(config: Mapping[str, Any], wanted: Platform) -> None:
    """Refuse an image built for another OS or architecture."""
    os_name, arch = config.get("os"), config.get("architecture")
    if (os_name and os_name != wanted.os) or (arch and arch != wanted.architecture):
        raise FailedPrecondition(
            f"the image is for {os_name or '?'}/{arch or '?'} and this node is {wanted}")
