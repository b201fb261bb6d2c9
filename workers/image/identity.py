"""``signedIdentity`` of containers-policy.json(5): what a signature may claim.

A signature names the image it was made for (the payload's
``critical.identity.docker-reference``). The image's own identity is the
reference the caller pulled, fully qualified (``busybox`` is
``docker.io/library/busybox:latest``; a reference with a digest is that
digest, its tag dropped, as podvisor pulls it by digest). A mirror does not
change it: the signature speaks for the logical name. The rules:

- ``matchRepoDigestOrExact`` (the default): a tagged image needs the exact
  ``name:tag``; an image pulled by digest needs the same repository, and
  the claim must still carry a tag or digest.
- ``matchExact``: the same string, so a digest pull of a tag-signed image
  fails.
- ``matchRepository``: the same repository, whatever the tag (cosign's own
  signatures claim a bare repository, so this is the one that takes them).
- ``exactReference`` / ``exactRepository``: a fixed reference or repository
  from the policy instead of the image's identity.
- ``remapIdentity``: the image's name, with ``prefix`` replaced by
  ``signedPrefix`` when it starts with it, then ``matchRepoDigestOrExact``.

Claimed identities are untrusted text: one that does not parse simply does
not match. ``parse`` raises ``ValueError`` with the problem; the policy
loader adds the file and the location.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ...proto.errors import InvalidArgument
from . import reference
from .reference import Reference


@dataclass(frozen=True)
class MatchRepoDigestOrExact:
    def __str__(self) -> str:
        return "matchRepoDigestOrExact"


@dataclass(frozen=True)
class MatchExact:
    def __str__(self) -> str:
        return "matchExact"


@dataclass(frozen=True)
class MatchRepository:
    def __str__(self) -> str:
        return "matchRepository"


@dataclass(frozen=True)
class ExactReference:
    reference: Reference

    def __str__(self) -> str:
        return f"exactReference {self.reference}"


@dataclass(frozen=True)
class ExactRepository:
    repository: Reference

    def __str__(self) -> str:
        return f"exactRepository {self.repository.name}"


@dataclass(frozen=True)
class RemapIdentity:
    prefix: str
    signed_prefix: str

    def __str__(self) -> str:
        return f"remapIdentity {self.prefix} -> {self.signed_prefix}"


IdentityMatch = (MatchRepoDigestOrExact | MatchExact | MatchRepository | ExactReference
                 | ExactRepository | RemapIdentity)

_FIELDS: Mapping[str, frozenset[str]] = {
    "matchRepoDigestOrExact": frozenset({"type"}),
    "matchExact": frozenset({"type"}),
    "matchRepository": frozenset({"type"}),
    "exactReference": frozenset({"type", "dockerReference"}),
    "exactRepository": frozenset({"type", "dockerRepository"}),
    "remapIdentity": frozenset({"type", "prefix", "signedPrefix"}),
}


def parse(value: Any) -> IdentityMatch:
    """A ``signedIdentity`` object from the policy file; ValueError if invalid."""
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    kind = value.get("type")
    if not isinstance(kind, str):
        raise ValueError("needs a string 'type'")
    fields = _FIELDS.get(kind)
    if fields is None:
        raise ValueError(f"unknown identity type {kind!r} (known: {', '.join(_FIELDS)})")
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ValueError(f"{kind} does not take {', '.join(map(repr, unknown))}")
    missing = sorted(fields - set(value))
    if missing:
        raise ValueError(f"{kind} needs {', '.join(map(repr, missing))}")
    if kind == "matchRepoDigestOrExact":
        return MatchRepoDigestOrExact()
    if kind == "matchExact":
        return MatchExact()
    if kind == "matchRepository":
        return MatchRepository()
    if kind == "exactReference":
        ref = _policy_reference(value["dockerReference"], "dockerReference")
        if ref.tag is None and ref.digest is None:
            raise ValueError(f"dockerReference {value['dockerReference']!r} has neither a tag "
                             "nor a digest")
        return ExactReference(ref)
    if kind == "exactRepository":
        return ExactRepository(_policy_reference(value["dockerRepository"], "dockerRepository"))
    return RemapIdentity(_prefix(value["prefix"], "prefix"),
                         _prefix(value["signedPrefix"], "signedPrefix"))


def _policy_reference(text: Any, field: str) -> Reference:
    if not isinstance(text, str):
        raise ValueError(f"{field} must be a string")
    try:
        return reference.parse_qualified(text)
    except InvalidArgument as exc:
        raise ValueError(f"{field}: {exc.message}") from None


def _prefix(text: Any, field: str) -> str:
    """A host[:port], namespace or repository, fully expanded, no tag or digest."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{field} must be a non-empty string")
    # Any valid prefix followed by one more component is a valid name
    # whose domain is the prefix's first part; nothing else is.
    probe = f"{text}/x"
    try:
        parsed = reference.parse(probe)
    except InvalidArgument:
        parsed = None
    if parsed is None or not parsed.domain or parsed.tag is not None \
            or parsed.digest is not None or parsed.name != probe:
        raise ValueError(f"{field} {text!r} is not a host[:port], namespace or repository")
    return text


def image_identity(ref: Reference) -> Reference:
    """The identity a pull of the qualified ``ref`` checks signatures against."""
    return replace(ref, tag=None) if ref.digest is not None else ref


def matches(rule: IdentityMatch, image: Reference, claimed: str) -> bool:
    """Does a signature claiming ``claimed`` speak for ``image`` under ``rule``?"""
    try:
        signed = reference.parse_qualified(claimed)
    except InvalidArgument:
        return False
    if isinstance(rule, MatchRepoDigestOrExact):
        return _repo_digest_or_exact(image, signed)
    if isinstance(rule, MatchExact):
        return _has_version(image) and _has_version(signed) and str(signed) == str(image)
    if isinstance(rule, MatchRepository):
        return signed.name == image.name
    if isinstance(rule, ExactReference):
        return _has_version(signed) and str(signed) == str(rule.reference)
    if isinstance(rule, ExactRepository):
        return signed.name == rule.repository.name
    remapped = _remap(rule, image)
    return remapped is not None and _repo_digest_or_exact(remapped, signed)


def _has_version(ref: Reference) -> bool:
    return ref.tag is not None or ref.digest is not None


def _repo_digest_or_exact(image: Reference, signed: Reference) -> bool:
    if not _has_version(signed):
        return False
    if image.digest is None:
        return image.tag is not None and str(signed) == str(image)
    return signed.name == image.name


def _remap(rule: RemapIdentity, image: Reference) -> Reference | None:
    name = image.name
    if name != rule.prefix and not name.startswith(f"{rule.prefix}/"):
        return image
    try:
        # Not re-qualified: containers/image parses the remapped name as
        # written, so a signedPrefix must already be fully expanded.
        return reference.parse(rule.signed_prefix + str(image)[len(rule.prefix):])
    except InvalidArgument:
        return None
