"""Docker image references: parse, validate, normalise.

Grammar (distribution's reference package, restated)::

    reference := name [":" tag] ["@" digest]
    name      := [domain "/"] component ("/" component)*
    domain    := host [":" port]          (first part, if it has "." or ":"
                                           or is "localhost" or has capitals)
    component := [a-z0-9]+ ((_|__|[-]+|.) [a-z0-9]+)*
    tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest    := "sha256:" 64 hex | "sha512:" 128 hex   (lowercase)

Invariants:
- A ``Reference`` is always syntactically valid; ``parse`` is the only way
  text becomes one, and it raises ``InvalidArgument`` saying what is wrong.
- A reference with ``domain == ""`` is a *short name*: which registry it
  means is for registries.conf to decide (registries_conf.py), never guessed
  here. ``qualify`` applies Docker Hub's rules: ``docker.io/busybox`` is
  ``docker.io/library/busybox``, and ``index.docker.io`` is ``docker.io``.
- ``str(ref)`` round-trips through ``parse``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ...proto.errors import InvalidArgument

DOCKER_HUB = "docker.io"
_LEGACY_HUB = "index.docker.io"
_OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
# The whole name, domain included, may not exceed this (distribution's limit).
MAX_NAME_LENGTH = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")
_IMAGE_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """A parsed image reference; ``domain`` is empty for a short name."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def is_short(self) -> bool:
        return not self.domain

    @property
    def name(self) -> str:
        """``domain/path`` (just ``path`` for a short name)."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_default_tag(self) -> Reference:
        """The same reference, tagged ``latest`` when it names no version."""
        if self.tag is None and self.digest is None:
            return replace(self, tag=DEFAULT_TAG)
        return self

    def tagged(self) -> str:
        """``name:tag``; the reference must carry a tag."""
        if self.tag is None:
            raise ValueError(f"{self} has no tag")
        return f"{self.name}:{self.tag}"

    def digested(self, digest: str | None = None) -> str:
        """``name@digest`` with this reference's digest, or ``digest``."""
        chosen = digest or self.digest
        if chosen is None:
            raise ValueError(f"{self} has no digest")
        return f"{self.name}@{chosen}"


def parse(text: str) -> Reference:
    """Parse ``text`` as written by a user (short names stay short)."""
    if not text:
        raise InvalidArgument("invalid image reference: it is empty")
    if text != text.strip():
        raise InvalidArgument(f"invalid image reference {text!r}: it has surrounding whitespace")
    if _IMAGE_ID.fullmatch(text):
        # Docker refuses these too: a bare 64-hex string is an image id, and
        # reading it as repository "<hex>" would shadow that meaning.
        raise InvalidArgument(
            f"invalid image reference {text!r}: a 64-character hex string is an image id, "
            "not a repository name")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        validate_digest(digest, what=f"image reference {text!r}")
    tag = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(
                f"invalid image reference {text!r}: tag {tag!r} must be 1-128 characters of "
                "letters, digits, '_', '.' or '-', not starting with '.' or '-'")
    domain, path = _split_domain(rest, text)
    if len(rest) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"invalid image reference {text!r}: the name is longer than "
            f"{MAX_NAME_LENGTH} characters")
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def _split_domain(name: str, text: str) -> tuple[str, str]:
    if not name:
        raise InvalidArgument(f"invalid image reference {text!r}: the repository name is empty")
    first, sep, remainder = name.partition("/")
    domain = ""
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _DOMAIN.fullmatch(first):
            raise InvalidArgument(
                f"invalid image reference {text!r}: {first!r} is not a valid registry host[:port]")
        # After an IPv6 literal's "]", a ":" can only start the port.
        _, colon, port = first.rpartition("]")[2].rpartition(":")
        if colon and not 0 < int(port) <= 65535:
            raise InvalidArgument(
                f"invalid image reference {text[:200]!r}: registry port {port[:20]} is not "
                "between 1 and 65535")
        domain, name = first, remainder
    for component in name.split("/"):
        if _COMPONENT.fullmatch(component):
            continue
        if component.lower() != component and _COMPONENT.fullmatch(component.lower()):
            raise InvalidArgument(
                f"invalid image reference {text!r}: repository name must be lowercase")
        raise InvalidArgument(
            f"invalid image reference {text!r}: path component {component!r} must be lowercase "
            "letters and digits, separated by '.', '_', '__' or '-'")
    return domain, name


def qualify(ref: Reference, domain: str | None = None) -> Reference:
    """Give ``ref`` a registry (``domain`` for short names) and apply Hub rules.

    A short name with no ``domain`` given is qualified as Docker would
    (``docker.io/library/<name>``); callers that honour registries.conf
    pass the registry it chose.
    """
    chosen = ref.domain or domain or DOCKER_HUB
    if chosen == _LEGACY_HUB:
        chosen = DOCKER_HUB
    path = ref.path
    if chosen == DOCKER_HUB and "/" not in path:
        path = f"{_OFFICIAL_NAMESPACE}/{path}"
    qualified = replace(ref, domain=chosen, path=path)
    if len(qualified.name) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"invalid image reference {ref}: the name is longer than "
            f"{MAX_NAME_LENGTH} characters")
    return qualified


def parse_qualified(text: str) -> Reference:
    """Parse ``text`` and qualify it with Docker's defaults."""
    return qualify(parse(text))


def validate_digest(digest: str, *, what: str = "digest") -> str:
    """Check ``algorithm:hex``; return it unchanged or raise InvalidArgument."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep:
        raise InvalidArgument(f"invalid {what}: digest {digest!r} has no 'algorithm:' prefix")
    length = _DIGEST_HEX_LENGTH.get(algorithm)
    if length is None:
        raise InvalidArgument(
            f"invalid {what}: digest algorithm {algorithm!r} is not supported "
            f"(use {' or '.join(_DIGEST_HEX_LENGTH)})")
    if len(encoded) != length or not _HEX.fullmatch(encoded):
        raise InvalidArgument(
            f"invalid {what}: a {algorithm} digest is {length} lowercase hex characters, "
            f"got {encoded!r}")
    return digest


def is_image_id(text: str) -> bool:
    """True for ``sha256:<64 hex>`` or a bare 64-hex image id."""
    return bool(_IMAGE_ID.fullmatch(text.removeprefix("sha256:")))
