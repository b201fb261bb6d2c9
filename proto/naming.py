"""CRI object names, derived from metadata as CRI-O's naming scheme does.

The runtime pool reserves these names on disk (sandbox and container
reserve) and answers them to the supervisor, so they are computed in that
one place.

    pod:        k8s_<name>_<namespace>_<uid>_<attempt>
    container:  k8s_<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>
"""

from __future__ import annotations

from . import api_pb2 as api
from .errors import InvalidArgument


def sandbox_name(metadata: api.PodSandboxMetadata) -> str:
    return "_".join(("k8s", _part(metadata.name, "metadata.name"),
                     _part(metadata.namespace, "metadata.namespace"),
                     _part(metadata.uid, "metadata.uid"), str(metadata.attempt)))


def container_name(metadata: api.ContainerMetadata, pod_metadata: api.PodSandboxMetadata) -> str:
    return "_".join(("k8s", _part(metadata.name, "metadata.name"),
                     _part(pod_metadata.name, "pod metadata.name"),
                     _part(pod_metadata.namespace, "pod metadata.namespace"),
                     _part(pod_metadata.uid, "pod metadata.uid"), str(metadata.attempt)))


def _part(value: str, where: str) -> str:
    if not value:
        raise InvalidArgument(f"{where} is required")
    # The name becomes a file name in the runtime pool's reservations.
    if "/" in value or "\x00" in value or value in (".", ".."):
        raise InvalidArgument(f"{where} {value!r} is not a valid name")
    return value
