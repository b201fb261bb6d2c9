"""CRI object names, derived from metadata as CRI-O's naming scheme does.

The kubelet retries a timed-out create with the same metadata, so the name
is the key both the supervisor (joining an in-flight create) and the
runtime pool (the on-disk reservation) use; one definition keeps them equal.

    pod:        k8s_<name>_<namespace>_<uid>_<attempt>
    container:  k8s_<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InvalidArgument


def sandbox_name(metadata: Mapping[str, Any]) -> str:
    return "_".join(("k8s", _part(metadata, "name", "metadata"),
                     _part(metadata, "namespace", "metadata"),
                     _part(metadata, "uid", "metadata"), _attempt(metadata)))


def container_name(metadata: Mapping[str, Any], pod_metadata: Mapping[str, Any]) -> str:
    return "_".join(("k8s", _part(metadata, "name", "metadata"),
                     _part(pod_metadata, "name", "pod metadata"),
                     _part(pod_metadata, "namespace", "pod metadata"),
                     _part(pod_metadata, "uid", "pod metadata"), _attempt(metadata)))


def _attempt(metadata: Mapping[str, Any]) -> str:
    try:
        return str(int(metadata.get("attempt", 0)))
    except (TypeError, ValueError):
        raise InvalidArgument("metadata.attempt must be a number") from None


def _part(metadata: Mapping[str, Any], key: str, where: str) -> str:
    value = metadata.get(key, "")
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{where}.{key} is required")
    # The name becomes a file name in the runtime pool's reservations.
    if "/" in value or "\x00" in value or value in (".", ".."):
        raise InvalidArgument(f"{where}.{key} {value!r} is not a valid name")
    return value
