"""systemd slice names and the cgroup paths they stand for.

A slice name encodes its place in the tree: each ``-`` separated prefix is
a parent slice, so ``kubepods-burstable-pod1.slice`` lives at
``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice``
and ``-.slice`` is the root. The kubelet (systemd cgroup driver) sends pod
parents in this form, and runc's ``--systemd-cgroup`` expands them with the
same rules (``ExpandSlice`` in opencontainers/cgroups), so the two must
agree to the character: names runc refuses are refused here too.

A name is also checked against systemd's own unit-name rules (its character
set and length), since systemd refuses anything else when the unit is made,
and the name becomes a directory under /sys/fs/cgroup.
"""

from __future__ import annotations

import string

from ....proto.errors import InvalidArgument, shorten

SLICE = ".slice"
SCOPE = ".scope"
ROOT_SLICE = "-.slice"

# systemd's unit_name_is_valid(): these characters, at most 255 of them.
_UNIT_CHARS = frozenset(string.ascii_letters + string.digits + ":-_.\\")
_UNIT_NAME_MAX = 255


def is_slice(name: str) -> bool:
    """Whether ``name`` is written as a slice name rather than a cgroupfs
    path: it ends in ``.slice`` and has no ``/``. It may still be invalid
    (``a--b.slice``); ``expand`` says so."""
    return name.endswith(SLICE) and "/" not in name


def expand(name: str) -> str:
    """The cgroup path of slice ``name``: ``a-b.slice`` -> ``/a.slice/a-b.slice``,
    ``-.slice`` -> ``/``. A name that is not a valid slice raises InvalidArgument."""
    if name == ROOT_SLICE:
        return "/"
    path = ""
    for component in _components(name):
        path += f"/{component}"
    return path


def parent(name: str) -> str | None:
    """The slice that holds slice ``name`` (``a-b.slice`` -> ``a.slice``,
    ``a.slice`` -> ``-.slice``); None for the root slice itself."""
    if name == ROOT_SLICE:
        return None
    components = _components(name)
    return components[-2] if len(components) > 1 else ROOT_SLICE


def scope(prefix: str, object_id: str) -> str:
    """The scope unit runc (``--systemd-cgroup``, cgroupsPath
    ``<slice>:<prefix>:<id>``) makes for a container: ``<prefix>-<id>.scope``."""
    name = f"{prefix}-{object_id}{SCOPE}"
    if not prefix or not object_id or not _unit_chars_ok(name):
        raise InvalidArgument(f"invalid scope name {shorten(name)}: systemd unit names take "
                              f"letters, digits and ':-_.\\', at most {_UNIT_NAME_MAX}")
    return name


def _components(name: str) -> list[str]:
    """The slice names from the top of the tree down to ``name``."""
    stem = name[: -len(SLICE)] if is_slice(name) else ""
    parts = stem.split("-")
    if not stem or "" in parts or not _unit_chars_ok(name):
        raise InvalidArgument(
            f"invalid slice name {shorten(name)}: expected a systemd slice such as "
            "kubepods-burstable-pod<uid>.slice (ends in .slice, no '/', no empty "
            "'-'-separated part, letters, digits and ':_.\\' only)")
    return ["-".join(parts[: i + 1]) + SLICE for i in range(len(parts))]


def _unit_chars_ok(name: str) -> bool:
    return len(name) <= _UNIT_NAME_MAX and all(c in _UNIT_CHARS for c in name)
