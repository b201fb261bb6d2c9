"""containers-policy.json(5): the requirements an image must meet to be pulled.

File
    ``{"default": [...], "transports": {"docker": {"<scope>": [...]}, ...}}``.
    Parsed as strictly as containers/image does: unknown or duplicated keys,
    a missing ``default``, an empty requirement list, an unknown requirement
    type, a malformed field anywhere (other transports included) make the
    whole file invalid. An invalid file fails every pull with
    FAILED_PRECONDITION naming the file and the spot; it is never read as
    "accept". A worker parses it once and again whenever it changes
    (filecache.py), so an edit applies to the next pull without a restart.

Requirements
    ``insecureAcceptAnything``, ``reject`` and ``sigstoreSigned`` with public
    keys (``keyPath``, ``keyPaths``, ``keyData``, ``keyDatas``) are enforced
    (trust.py). ``signedBy`` (GPG), ``signedBaseLayer`` and ``sigstoreSigned``
    with Fulcio, PKI or Rekor are parsed and validated, and become
    ``Unsupported``: a pull that meets one fails with a "not supported"
    error, while a file that uses them only for other scopes still works.

Scopes (docker transport)
    For a qualified reference the most specific scope wins, in this order:
    ``host/ns/repo:tag`` (or ``@digest``), ``host/ns/repo``, each parent
    namespace, ``host[:port]``, then ``*.domain`` wildcards from the longest
    (the port dropped), then the transport's ``""`` scope, then ``default``.
    The reference is the one the caller asked for, never a mirror's.

No file
    Every image is accepted, and the loader warns once per process (one
    ``PolicyLoader`` lives in each worker's ImageService). A file that
    appears later is read by the next pull.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import logging
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...proto.errors import FailedPrecondition
from . import identity
from .filecache import FileCache
from .identity import IdentityMatch
from .reference import Reference

log = logging.getLogger(__name__)

DEFAULT_POLICY = "/etc/containers/policy.json"
# A policy is a few kilobytes; this only bounds what a wrong path can cost.
MAX_POLICY_BYTES = 4 << 20
DOCKER = "docker"


@dataclass(frozen=True)
class InsecureAcceptAnything:
    def __str__(self) -> str:
        return "insecureAcceptAnything"


@dataclass(frozen=True)
class Reject:
    def __str__(self) -> str:
        return "reject"


@dataclass(frozen=True)
class PublicKey:
    """Where one sigstore public key comes from (its PEM is read at pull time)."""

    label: str               # for messages: the path, or "keyData", "keyDatas[1]"
    path: str | None = None
    pem: bytes | None = None


@dataclass(frozen=True)
class SigstoreSigned:
    keys: tuple[PublicKey, ...]
    identity: IdentityMatch

    def describe_keys(self) -> str:
        if len(self.keys) == 1:
            return f"key {self.keys[0].label}"
        return f"keys {', '.join(k.label for k in self.keys)}"

    def __str__(self) -> str:
        return f"sigstoreSigned ({self.describe_keys()}, signedIdentity {self.identity})"


@dataclass(frozen=True)
class Unsupported:
    """A valid requirement podvisor cannot enforce; pulls under it fail."""

    type: str
    reason: str

    def __str__(self) -> str:
        return self.type


Requirement = InsecureAcceptAnything | Reject | SigstoreSigned | Unsupported


@dataclass(frozen=True)
class Scope:
    """The requirements that apply to one image, and where they came from."""

    policy_path: str
    name: str                 # 'default', 'transport docker', or 'scope "<key>"'
    requirements: tuple[Requirement, ...]


@dataclass(frozen=True)
class Policy:
    path: str
    default: tuple[Requirement, ...]
    docker: Mapping[str, tuple[Requirement, ...]] = field(default_factory=dict)
    exists: bool = True

    @classmethod
    def accept_all(cls, path: str) -> Policy:
        """What applies when ``path`` does not exist."""
        return cls(path, (InsecureAcceptAnything(),), {}, exists=False)

    def scope_for(self, ref: Reference) -> Scope:
        """The requirements for the qualified ``ref`` (module docstring)."""
        for key in docker_scopes(ref):
            requirements = self.docker.get(key)
            if requirements is not None:
                return Scope(self.path, f"scope {key!r}", requirements)
        transport_default = self.docker.get("")
        if transport_default is not None:
            return Scope(self.path, "transport docker", transport_default)
        return Scope(self.path, "default", self.default)


def docker_scopes(ref: Reference) -> list[str]:
    """Scope keys that may match ``ref``, most specific first."""
    if ref.digest is not None:
        scopes = [f"{ref.name}@{ref.digest}"]
    elif ref.tag is not None:
        scopes = [f"{ref.name}:{ref.tag}"]
    else:
        scopes = []
    name = ref.name
    while True:
        scopes.append(name)
        if "/" not in name:
            break
        name = name.rsplit("/", 1)[0]
    # ``name`` is now host[:port]. Wildcards match subdomains and never a
    # port; a bracketed IPv6 literal has no subdomains.
    host = name if name.startswith("[") else name.split(":", 1)[0]
    while "." in host and not host.startswith("["):
        host = host.split(".", 1)[1]
        scopes.append(f"*.{host}")
    return scopes


# ---- loading --------------------------------------------------------------


class PolicyLoader:
    """The policy file at ``path``, parsed once per change; warns once if missing."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._warned = False
        self._cache = FileCache(lambda: (path,), self._parse)

    def load(self) -> Policy:
        return self._cache.get()

    def _parse(self) -> Policy:
        try:
            data = _read(self.path)
        except FileNotFoundError:
            with self._lock:
                first, self._warned = not self._warned, True
            if first:
                log.warning("Signature policy %s does not exist: every image is accepted "
                            "without signature checks", self.path)
            return Policy.accept_all(self.path)
        except OSError as exc:
            raise FailedPrecondition(f"signature policy {self.path} cannot be read: "
                                     f"{exc.strerror or exc}") from None
        return parse(data, self.path)


def _read(path: str) -> bytes:
    # Checked before opening: opening a FIFO would block the pull.
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    with open(path, "rb") as f:
        data = f.read(MAX_POLICY_BYTES + 1)
    if len(data) > MAX_POLICY_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_POLICY_BYTES} bytes")
    return data


class _Invalid(Exception):
    """A problem at one spot of the file; ``parse`` adds the file name."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)


def parse(data: bytes, path: str) -> Policy:
    """Parse the text of policy file ``path``; FailedPrecondition if invalid."""
    try:
        doc = json.loads(data, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as exc:
        raise FailedPrecondition(f"invalid signature policy {path}: not UTF-8 text "
                                 f"({exc.reason} at byte {exc.start})") from None
    except _Invalid as exc:
        raise FailedPrecondition(f"invalid signature policy {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise FailedPrecondition(f"invalid signature policy {path}: not valid JSON: "
                                 f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    try:
        return _policy(doc, path)
    except _Invalid as exc:
        raise FailedPrecondition(f"invalid signature policy {path}: {exc}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Invalid("", f"duplicate key {key!r}")
        result[key] = value
    return result


def _object(value: Any, where: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(where, "must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _Invalid(where, f"unknown field {unknown[0]!r}")
    return value


def _policy(doc: Any, path: str) -> Policy:
    top = _object(doc, "", frozenset({"default", "transports"}))
    if "default" not in top:
        raise _Invalid("", "the 'default' requirements are missing")
    default = _requirements(top["default"], "default")
    docker: dict[str, tuple[Requirement, ...]] = {}
    transports = top.get("transports", {})
    if not isinstance(transports, dict):
        raise _Invalid("transports", "must be a JSON object")
    for transport, scopes in transports.items():
        if not isinstance(scopes, dict):
            raise _Invalid(f"transports.{transport}", "must be a JSON object")
        for scope, value in scopes.items():
            # Other transports are validated too (containers/image refuses
            # the whole file otherwise) but only docker's apply to pulls.
            requirements = _requirements(value, f"transports.{transport}[{scope!r}]")
            if transport == DOCKER:
                docker[scope] = requirements
    return Policy(path, default, docker)


def _requirements(value: Any, where: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list):
        raise _Invalid(where, "must be a list of requirements")
    if not value:
        raise _Invalid(where, "the list of requirements must not be empty")
    return tuple(_requirement(item, f"{where}[{i}]") for i, item in enumerate(value))


_SIGSTORE_FIELDS = frozenset({
    "type", "keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki",
    "rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData",
    "rekorPublicKeyDatas", "signedIdentity"})
_KEY_SOURCES = ("keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki")
_REKOR_SOURCES = ("rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData",
                  "rekorPublicKeyDatas")


def _requirement(value: Any, where: str) -> Requirement:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise _Invalid(where, "a requirement must be a JSON object with a string 'type'")
    kind = value["type"]
    if kind == "insecureAcceptAnything":
        _object(value, where, frozenset({"type"}))
        return InsecureAcceptAnything()
    if kind == "reject":
        _object(value, where, frozenset({"type"}))
        return Reject()
    if kind == "sigstoreSigned":
        return _sigstore(_object(value, where, _SIGSTORE_FIELDS), where)
    if kind == "signedBy":
        return _signed_by(value, where)
    if kind == "signedBaseLayer":
        _object(value, where, frozenset({"type", "baseLayerIdentity"}))
        if "baseLayerIdentity" not in value:
            raise _Invalid(where, "signedBaseLayer needs 'baseLayerIdentity'")
        _identity(value["baseLayerIdentity"], f"{where}.baseLayerIdentity")
        return Unsupported(kind, "signedBaseLayer requirements are not supported by podvisor "
                                 "(containers/image does not implement them either)")
    raise _Invalid(where, f"unknown requirement type {kind!r} (known: insecureAcceptAnything, "
                          "reject, signedBy, sigstoreSigned, signedBaseLayer)")


def _signed_by(value: dict[str, Any], where: str) -> Unsupported:
    _object(value, where, frozenset({"type", "keyType", "keyPath", "keyPaths", "keyData",
                                     "signedIdentity"}))
    if value.get("keyType") != "GPGKeys":
        raise _Invalid(where, "signedBy needs \"keyType\": \"GPGKeys\"")
    _one_source(value, ("keyPath", "keyPaths", "keyData"), where)
    if "signedIdentity" in value:
        _identity(value["signedIdentity"], f"{where}.signedIdentity")
    return Unsupported("signedBy", "GPG simple signing (signedBy) is not supported by "
                                   "podvisor; use sigstoreSigned with a public key")


def _sigstore(value: dict[str, Any], where: str) -> SigstoreSigned | Unsupported:
    source = _one_source(value, _KEY_SOURCES, where)
    rekor = [name for name in _REKOR_SOURCES if name in value]
    if len(rekor) > 1:
        raise _Invalid(where, f"at most one of {', '.join(_REKOR_SOURCES)} may be given")
    if source == "fulcio" and not rekor:
        raise _Invalid(where, "fulcio needs a Rekor public key (rekorPublicKey*)")
    if source == "pki" and rekor:
        raise _Invalid(where, "pki does not take a Rekor public key")
    rule: IdentityMatch = identity.MatchRepoDigestOrExact()
    if "signedIdentity" in value:
        rule = _identity(value["signedIdentity"], f"{where}.signedIdentity")
    if source in ("fulcio", "pki"):
        if not isinstance(value[source], dict):
            raise _Invalid(f"{where}.{source}", "must be a JSON object")
        return Unsupported("sigstoreSigned", f"sigstoreSigned with {source} certificates is "
                                             "not supported by podvisor; use public keys")
    for name in rekor:
        _key_values(value[name], name, where)
    keys = _key_values(value[source], source, where)
    if rekor:
        # The Rekor requirement cannot be dropped silently: without the SET
        # check a signature kept out of the log would be accepted.
        return Unsupported("sigstoreSigned", "sigstoreSigned with a Rekor public key "
                                             "(transparency log proof) is not supported by "
                                             "podvisor")
    return SigstoreSigned(keys, rule)


def _one_source(value: dict[str, Any], names: tuple[str, ...], where: str) -> str:
    present = [name for name in names if name in value]
    if len(present) != 1:
        raise _Invalid(where, f"exactly one of {', '.join(names)} must be given"
                              + (f" (found {', '.join(present)})" if present else ""))
    return present[0]


def _key_values(value: Any, field_name: str, where: str) -> tuple[PublicKey, ...]:
    """The keys of ``keyPath``/``keyPaths``/``keyData``/``keyDatas`` (and Rekor's)."""
    spot = f"{where}.{field_name}"
    plural = field_name.endswith(("Paths", "Datas"))
    items = value if plural else [value]
    if not isinstance(items, list) or not items:
        raise _Invalid(spot, "must be a non-empty list" if plural else "must be a string")
    keys = []
    for i, item in enumerate(items):
        label = f"{field_name}[{i}]" if plural else field_name
        if not isinstance(item, str) or not item:
            raise _Invalid(spot, f"{label} must be a non-empty string")
        if field_name.endswith(("Path", "Paths")):
            keys.append(PublicKey(item, path=item))
            continue
        try:
            # Go's []byte in JSON: standard base64 of the PEM text.
            pem = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(spot, f"{label} is not base64") from None
        keys.append(PublicKey(label, pem=pem))
    return tuple(keys)


def _identity(value: Any, where: str) -> IdentityMatch:
    try:
        return identity.parse(value)
    except ValueError as exc:
        raise _Invalid(where, str(exc)) from None
