"""containers-registries.conf(5), version 2: where a reference is pulled from.

The file is TOML, shared with CRI-O and podman. Read here:
``unqualified-search-registries``, ``short-name-mode``, ``[aliases]``, and
``[[registry]]`` tables (``prefix``, ``location``, ``insecure``, ``blocked``,
``mirror-by-digest-only``) with their ``[[registry.mirror]]`` tables
(``location``, ``insecure``, ``pull-from-mirror``). Drop-ins in
``<path>.d/*.conf`` are applied in name order: a later file replaces the
top-level keys it sets and any ``[[registry]]`` with the same prefix, and
merges its aliases (an empty alias value erases one). Keys this runtime has
no use for (credential helpers and the like) are ignored, unknown ones too,
as containers/image does.

Invariants:
- The reference a user wrote is the image's *name*; mirrors and ``location``
  only change where the bytes come from (``PullSource.reference``).
- Exactly one ``[[registry]]`` table applies to a name: the longest matching
  prefix, where a match must end at a ``/``, ``:`` or ``@`` boundary.
- A blocked registry is refused before any source is contacted, mirrors
  included.
- Short names never prompt: in ``enforcing`` mode (our default) a short name
  with no alias and several search registries is an error that says so.
- A missing file means the defaults: Docker Hub as the only search registry,
  so ``busybox`` is ``docker.io/library/busybox`` as the kubelet expects. A
  file that exists but cannot be used is an error naming it.
- A worker parses the files once (``cached``) and again only when one of
  them, or the list of drop-ins, changes (filecache.py): an edit applies to
  the next op, with no restart and no SIGHUP (CRI-O needs one).
"""

from __future__ import annotations

import enum
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ...proto.errors import FailedPrecondition, InvalidArgument
from . import reference
from .filecache import FileCache
from .reference import Reference

log = logging.getLogger(__name__)


class ShortNameMode(enum.Enum):
    ENFORCING = "enforcing"
    PERMISSIVE = "permissive"
    DISABLED = "disabled"


class PullFromMirror(enum.Enum):
    ALL = "all"
    DIGEST_ONLY = "digest-only"
    TAG_ONLY = "tag-only"


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from_mirror: PullFromMirror = PullFromMirror.ALL


@dataclass(frozen=True)
class RegistryTable:
    """One ``[[registry]]`` table; ``prefix`` may start with ``*.``."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True)
class RegistriesConf:
    search: tuple[str, ...] = (reference.DOCKER_HUB,)
    short_name_mode: ShortNameMode = ShortNameMode.ENFORCING
    aliases: Mapping[str, str] = field(default_factory=dict)
    registries: tuple[RegistryTable, ...] = ()
    # The files this was read from, for error messages.
    sources: tuple[str, ...] = ()

    def describe(self) -> str:
        return ", ".join(self.sources) if self.sources else "the built-in defaults"


@dataclass(frozen=True)
class PullSource:
    """One place to try: the physical reference and how to reach its host."""

    reference: Reference
    insecure: bool
    mirror: bool


def dropins(path: str) -> list[str]:
    """The drop-in files of ``path``, in the order they apply."""
    dropin_dir = f"{path}.d"
    if not os.path.isdir(dropin_dir):
        return []
    return [os.path.join(dropin_dir, name) for name in sorted(os.listdir(dropin_dir))
            if name.endswith(".conf")]


def load(path: str) -> RegistriesConf:
    """Read ``path`` and its drop-ins; a missing file gives the defaults."""
    files = [path] if os.path.exists(path) else []
    files += dropins(path)
    if not files:
        return RegistriesConf()
    merged: dict[str, Any] = {}
    registries: dict[str, RegistryTable] = {}
    aliases: dict[str, str] = {}
    for file in files:
        data = _read_toml(file)
        for key in ("unqualified-search-registries", "short-name-mode"):
            if key in data:
                merged[key] = data[key]
        for table in _registry_tables(data, file):
            registries[table.prefix] = table
        for name, value in _aliases(data, file).items():
            if value:
                aliases[name] = value
            else:
                aliases.pop(name, None)
    search = merged.get("unqualified-search-registries", [])
    if not isinstance(search, list) or not all(isinstance(s, str) for s in search):
        raise FailedPrecondition(
            f"{', '.join(files)}: unqualified-search-registries must be a list of "
            "host[:port] strings")
    for host in search:
        _check_host(host, "unqualified-search-registries", files[-1])
    mode_text = merged.get("short-name-mode", "") or ShortNameMode.ENFORCING.value
    try:
        mode = ShortNameMode(mode_text)
    except ValueError:
        raise FailedPrecondition(
            f"{', '.join(files)}: short-name-mode {mode_text!r} is not one of "
            f"{', '.join(m.value for m in ShortNameMode)}") from None
    return RegistriesConf(search=tuple(search), short_name_mode=mode, aliases=aliases,
                          registries=tuple(registries.values()), sources=tuple(files))


def cached(path: str) -> FileCache[RegistriesConf]:
    """``load(path)``, parsed again only once the file or a drop-in changed."""
    return FileCache(lambda: [path, *dropins(path)], lambda: load(path))


def _read_toml(file: str) -> dict[str, Any]:
    try:
        with open(file, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FailedPrecondition(f"cannot read registries configuration {file}: {exc}") from None
    if "registries" in data and isinstance(data["registries"], dict):
        raise FailedPrecondition(
            f"{file}: the version 1 format ([registries.search] and friends) is not "
            "supported; use unqualified-search-registries and [[registry]] tables")
    return data


def _bool(table: Mapping[str, Any], key: str, file: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise FailedPrecondition(f"{file}: {key} must be true or false, got {value!r}")
    return value


def _str(table: Mapping[str, Any], key: str, file: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise FailedPrecondition(f"{file}: {key} must be a string, got {value!r}")
    return value


def _registry_tables(data: Mapping[str, Any], file: str) -> list[RegistryTable]:
    raw = data.get("registry", [])
    if not isinstance(raw, list):
        raise FailedPrecondition(f"{file}: registry must be an array of tables ([[registry]])")
    return [_registry_table(entry, file) for entry in raw]


def _registry_table(entry: Any, file: str) -> RegistryTable:
    if not isinstance(entry, dict):
        raise FailedPrecondition(f"{file}: each [[registry]] must be a table")
    location = _str(entry, "location", file).rstrip("/")
    prefix = _str(entry, "prefix", file).rstrip("/") or location
    if not prefix:
        raise FailedPrecondition(f"{file}: a [[registry]] table needs a prefix or a location")
    if prefix.startswith("*."):
        if "/" in prefix or ":" in prefix:
            raise FailedPrecondition(
                f"{file}: wildcard prefix {prefix!r} may only name hosts (*.example.com)")
        if location:
            raise FailedPrecondition(
                f"{file}: [[registry]] {prefix!r} has a wildcard prefix, so it cannot "
                "set a location")
    else:
        _check_location(prefix, "prefix", file)
    if location:
        _check_location(location, f"location of {prefix!r}", file)
    by_digest = _bool(entry, "mirror-by-digest-only", file)
    mirrors = []
    raw_mirrors = entry.get("mirror", [])
    if not isinstance(raw_mirrors, list):
        raise FailedPrecondition(f"{file}: mirror of {prefix!r} must be [[registry.mirror]]")
    for raw in raw_mirrors:
        if not isinstance(raw, dict):
            raise FailedPrecondition(f"{file}: each [[registry.mirror]] must be a table")
        mirror_location = _str(raw, "location", file).rstrip("/")
        _check_location(mirror_location, f"mirror location of {prefix!r}", file)
        policy_text = _str(raw, "pull-from-mirror", file) or PullFromMirror.ALL.value
        try:
            policy = PullFromMirror(policy_text)
        except ValueError:
            raise FailedPrecondition(
                f"{file}: pull-from-mirror {policy_text!r} of mirror {mirror_location!r} "
                "must be all, digest-only or tag-only") from None
        if by_digest and "pull-from-mirror" in raw:
            # The man page allows one or the other, never both.
            raise FailedPrecondition(
                f"{file}: [[registry]] {prefix!r} sets mirror-by-digest-only, so its "
                f"mirror {mirror_location!r} cannot set pull-from-mirror")
        mirrors.append(Mirror(mirror_location, _bool(raw, "insecure", file),
                              PullFromMirror.DIGEST_ONLY if by_digest else policy))
    return RegistryTable(prefix=prefix, location=location, insecure=_bool(entry, "insecure", file),
                         blocked=_bool(entry, "blocked", file), mirror_by_digest_only=by_digest,
                         mirrors=tuple(mirrors))


def _aliases(data: Mapping[str, Any], file: str) -> dict[str, str]:
    raw = data.get("aliases", {})
    if not isinstance(raw, dict):
        raise FailedPrecondition(f"{file}: [aliases] must be a table")
    aliases = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise FailedPrecondition(f"{file}: alias {name!r} must be a string")
        short = _parse_in(name, f"alias name {name!r}", file)
        if not short.is_short or short.tag or short.digest:
            raise FailedPrecondition(
                f"{file}: alias name {name!r} must be a short name with no tag or digest")
        if value:
            target = _parse_in(value, f"alias {name!r}", file)
            if target.is_short or target.tag or target.digest:
                raise FailedPrecondition(
                    f"{file}: alias {name!r} must point to a fully qualified name with no tag "
                    f"or digest, got {value!r}")
        aliases[name] = value
    return aliases


def _parse_in(text: str, what: str, file: str) -> Reference:
    try:
        return reference.parse(text)
    except InvalidArgument as exc:
        raise FailedPrecondition(f"{file}: {what}: {exc.message}") from None


def _check_location(text: str, what: str, file: str) -> None:
    # A location is a reference prefix: host[:port][/path][:tag|@digest].
    parsed = _parse_in(text if "/" in text else f"{text}/x", what, file)
    if not parsed.domain or ("/" not in text and parsed.domain != text):
        raise FailedPrecondition(
            f"{file}: {what} {text!r} must start with a registry host (a name with a '.' "
            "or a ':port', or localhost)")


def _check_host(text: str, what: str, file: str) -> None:
    _check_location(text, what, file)
    if "/" in text:
        raise FailedPrecondition(f"{file}: {what} entries are host[:port], got {text!r}")


# ---- resolution -------------------------------------------------------------


def _match_length(table: RegistryTable, name: str) -> int:
    """How much of ``name`` the table's prefix matches (0: no match)."""
    if table.prefix.startswith("*."):
        # Only the host is compared; the match then covers host[:port], so
        # a mirror of a wildcard table replaces the whole registry part.
        host = name.split("/", 1)[0]
        hostname = host if host.endswith("]") else host.rsplit(":", 1)[0]
        return len(host) if hostname.endswith(table.prefix[1:]) else 0
    if not name.startswith(table.prefix):
        return 0
    end = len(table.prefix)
    if end == len(name) or name[end] in "/:@":
        return end
    return 0


def find_table(conf: RegistriesConf, ref: Reference) -> tuple[RegistryTable, int] | None:
    """The ``[[registry]]`` table for a qualified ``ref`` and its match length."""
    text = str(ref)
    best: tuple[RegistryTable, int] | None = None
    for table in conf.registries:
        length = _match_length(table, text)
        if length and (best is None or length > best[1]):
            best = (table, length)
    return best


def pull_sources(conf: RegistriesConf, ref: Reference) -> list[PullSource]:
    """Where to pull the qualified ``ref`` from, in order: mirrors, then primary."""
    match = find_table(conf, ref)
    if match is None:
        return [PullSource(ref, insecure=False, mirror=False)]
    table, length = match
    if table.blocked:
        raise FailedPrecondition(
            f"registry {table.prefix} is blocked in {conf.describe()}: refusing to pull {ref}")
    text = str(ref)
    by_digest = ref.digest is not None
    sources = []
    for mirror in table.mirrors:
        if mirror.pull_from_mirror is PullFromMirror.DIGEST_ONLY and not by_digest:
            continue
        if mirror.pull_from_mirror is PullFromMirror.TAG_ONLY and by_digest:
            continue
        sources.append(PullSource(_rewrite(mirror.location, text, length, conf),
                                  insecure=mirror.insecure, mirror=True))
    primary = _rewrite(table.location, text, length, conf) if table.location else ref
    sources.append(PullSource(primary, insecure=table.insecure, mirror=False))
    return sources


def _rewrite(location: str, text: str, length: int, conf: RegistriesConf) -> Reference:
    rewritten = location + text[length:]
    try:
        return reference.qualify(reference.parse(rewritten))
    except InvalidArgument as exc:
        raise FailedPrecondition(
            f"{conf.describe()}: rewriting {text} gives {rewritten!r}, which is not a "
            f"valid reference: {exc.message}") from None


def pull_candidates(conf: RegistriesConf, ref: Reference) -> list[Reference]:
    """The qualified names to try pulling for ``ref``, honouring short-name mode."""
    if not ref.is_short:
        return [reference.qualify(ref)]
    aliased = _alias(conf, ref)
    if aliased is not None:
        return [aliased]
    if not conf.search:
        raise InvalidArgument(
            f"short name {ref} has no alias and no unqualified-search-registries are set in "
            f"{conf.describe()}: use a fully qualified name such as docker.io/{ref}")
    if len(conf.search) > 1 and conf.short_name_mode is ShortNameMode.ENFORCING:
        raise InvalidArgument(
            f"short name {ref} is ambiguous: it could come from any of "
            f"{', '.join(conf.search)} (short-name-mode is enforcing in {conf.describe()}); "
            "use a fully qualified name or add an alias")
    return [reference.qualify(ref, host) for host in conf.search]


def lookup_candidates(conf: RegistriesConf, ref: Reference) -> list[Reference]:
    """Every qualified name a local lookup of ``ref`` may mean, best first.

    Local lookups never fail on ambiguity: an image already on the node
    under one of the names is the one meant.
    """
    if not ref.is_short:
        return [reference.qualify(ref)]
    names = []
    aliased = _alias(conf, ref)
    if aliased is not None:
        names.append(aliased)
    names += [reference.qualify(ref, host) for host in conf.search]
    default = reference.qualify(ref)
    if default not in names:
        names.append(default)
    return names


def _alias(conf: RegistriesConf, ref: Reference) -> Reference | None:
    target = conf.aliases.get(ref.path)
    if target is None:
        return None
    # Tags and digests are stripped for alias lookup and carried over.
    return replace(reference.qualify(reference.parse(target)), tag=ref.tag, digest=ref.digest)
