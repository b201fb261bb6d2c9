"""Sigstore signatures attached to an image in its registry, as cosign writes them.

Format
    The signatures of the manifest with digest ``sha256:<hex>`` live in the
    same repository under the tag ``sha256-<hex>.sig``: an OCI image manifest
    whose layers of media type ``application/vnd.dev.cosign.simplesigning.v1+json``
    are signatures (other layers are other attachments and are skipped).
    Each such layer's blob is the signed payload, JSON of the "simple
    signing" form::

        {"critical": {"identity": {"docker-reference": "<name[:tag]>"},
                      "image": {"docker-manifest-digest": "sha256:<hex>"},
                      "type": "cosign container image signature"},
         "optional": {...} or null}

    and its annotation ``dev.cosignproject.cosign/signature`` is the base64
    signature over exactly those blob bytes: ECDSA (any NIST curve) over
    SHA-256 in ASN.1 DER, RSA PKCS#1 v1.5 over SHA-256, or Ed25519.

Invariants
    - The payload is untrusted until its signature verifies with a key of
      the policy; it is parsed only after that, and then strictly (every
      ``critical`` field present, no other field there), as containers/image
      does, so a payload that means something unexpected is refused.
    - Every size is bounded (``MAX_*``), and each blob is checked against
      its descriptor's digest before it is used.

This is the only module that touches cryptography; key material is read
through ``load_key`` and never logged. cryptography is imported by the two
functions that use it, on the first policy with a key: importing it holds
about 3 MiB that every worker would share, on nodes that mostly verify
nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...proto.errors import InvalidArgument
from .reference import validate_digest

SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# containers/image's limits: 4 MiB for the manifest and for each signature.
MAX_ATTACHMENT_MANIFEST_BYTES = 4 << 20
MAX_SIGNATURE_BYTES = 4 << 20
# More signatures than this on one image is not a signing workflow.
MAX_SIGNATURES = 64

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    VerifyingKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def attachment_tag(digest: str) -> str:
    """The tag holding the signatures of manifest ``digest``."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}-{encoded}.sig"


@dataclass(frozen=True)
class Signature:
    """One layer of an attachment manifest that claims to be a signature."""

    digest: str
    size: int
    signature: str    # base64, from the annotation ("" when absent)


@dataclass(frozen=True)
class Payload:
    docker_reference: str
    manifest_digest: str


def parse_attachments(body: bytes, media_type: str) -> tuple[list[Signature], int]:
    """The signatures in an attachment manifest, and how many layers were
    other attachments; ValueError when it is not an OCI image manifest."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    # The document's own mediaType decides; the header fills in when the
    # field is absent (as manifest.py reads manifests).
    kind = doc.get("mediaType") or media_type
    if kind != OCI_MANIFEST:
        raise ValueError(f"its media type {kind!r} is not {OCI_MANIFEST}")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ValueError("it has no layers list")
    signatures, others = [], 0
    for layer in layers:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIGNATURE_MEDIA_TYPE:
            others += 1
            continue
        digest, size = layer.get("digest"), layer.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
            raise ValueError("a signature layer lacks a valid digest or size")
        try:
            validate_digest(digest, what="signature layer")
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        annotations = layer.get("annotations")
        value = annotations.get(SIGNATURE_ANNOTATION) \
            if isinstance(annotations, Mapping) else None
        signatures.append(Signature(digest, size, value if isinstance(value, str) else ""))
    if len(signatures) > MAX_SIGNATURES:
        raise ValueError(f"it lists {len(signatures)} signatures, more than the "
                         f"{MAX_SIGNATURES} podvisor checks")
    return signatures, others


def check_blob(data: bytes, sig: Signature) -> None:
    """ValueError unless ``data`` is the blob ``sig`` describes."""
    if len(data) != sig.size:
        raise ValueError(f"its payload is {len(data)} bytes, not {sig.size}")
    algorithm = sig.digest.split(":", 1)[0]
    if f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}" != sig.digest:
        raise ValueError("its payload does not match its digest")


def load_key(pem: bytes) -> VerifyingKey:
    """A public key from PEM; ValueError naming what is wrong."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey
                  | ed25519.Ed25519PublicKey):
        return key
    raise ValueError(f"{type(key).__name__} keys are not used for sigstore signatures "
                     "(ECDSA, RSA or Ed25519)")


def verify(key: VerifyingKey, payload: bytes, signature: bytes) -> bool:
    """Is ``signature`` over ``payload`` made with ``key`` (sigstore's SHA-256 rules)?"""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def decode_signature(text: str) -> bytes:
    """The annotation's signature bytes; ValueError when it is not base64."""
    if not text:
        raise ValueError(f"it has no {SIGNATURE_ANNOTATION} annotation")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"its {SIGNATURE_ANNOTATION} annotation is not base64") from None


def parse_payload(data: bytes) -> Payload:
    """The claims of a payload whose signature has verified; ValueError if malformed."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"its payload is not JSON: {exc}") from None
    # Both fields are required (cosign always writes "optional", often null),
    # exactly as containers/image reads the payload.
    top = _exact(doc, {"critical", "optional"}, "top level")
    if top["optional"] is not None and not isinstance(top["optional"], dict):
        raise ValueError("its payload's optional field is neither null nor an object")
    critical = _exact(top["critical"], {"type", "image", "identity"}, "critical")
    if critical["type"] != SIGNATURE_TYPE:
        raise ValueError(f"its payload type is {critical['type']!r}, not {SIGNATURE_TYPE!r}")
    image = _exact(critical["image"], {"docker-manifest-digest"}, "critical.image")
    claimed = _exact(critical["identity"], {"docker-reference"}, "critical.identity")
    digest, ref = image["docker-manifest-digest"], claimed["docker-reference"]
    if not isinstance(digest, str) or not isinstance(ref, str):
        raise ValueError("its payload's digest and reference must be strings")
    try:
        validate_digest(digest, what="signed manifest digest")
    except InvalidArgument as exc:
        raise ValueError(exc.message) from None
    return Payload(ref, digest)


def _exact(value: Any, fields: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"its payload's {where} is not a JSON object")
    unknown = sorted(set(value) - fields)
    missing = sorted(fields - set(value))
    if unknown or missing:
        problem = f"has unknown field {unknown[0]!r}" if unknown \
            else f"lacks field {missing[0]!r}"
        raise ValueError(f"its payload's {where} {problem}")
    return value


def digest_matches(body: bytes, claimed: str) -> bool:
    """Does manifest ``body`` have the (already validated) digest ``claimed``?"""
    algorithm = claimed.split(":", 1)[0]
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}" == claimed
