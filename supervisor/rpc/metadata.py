"""The bound on the labels and annotations a pod or container may carry."""

from __future__ import annotations

from google.protobuf.message import Message

from ...proto.errors import ResourceExhausted, shorten

METADATA_MAX = 512 * 1024
"""UTF-8 bytes of the labels and annotations (keys and values) of one pod or
container. Twice the 256 KiB the API server allows a pod's annotations, so
anything it admits fits with its labels and the kubelet's own annotations;
small enough that 110 pods (the kubelet's default max-pods) at the bound
list in 55 MiB, under the 80 MiB gRPC send limit. Records keep this
metadata, so without a bound one pod could make ListPodSandbox unanswerable."""


def check_metadata(what: str, config: Message) -> None:
    """Refuse a ``config`` whose ``labels`` and ``annotations`` together are
    over METADATA_MAX, naming the largest entry; before anything copies them."""
    size, largest, largest_size = 0, "", -1
    for kind in ("labels", "annotations"):
        for key, value in getattr(config, kind).items():
            entry = _utf8_len(key) + _utf8_len(value)
            size += entry
            if entry > largest_size:
                largest, largest_size = f"{kind[:-1]} {shorten(key, 64)}", entry
    if size > METADATA_MAX:
        raise ResourceExhausted(
            f"{what}: labels and annotations take {size} bytes, over podvisor's limit of "
            f"{METADATA_MAX}; the largest is {largest} ({largest_size} bytes)")


def _utf8_len(text: str) -> int:
    # An ASCII str knows it is one byte per character: a huge value is not
    # encoded (copied) just to be measured.
    return len(text) if text.isascii() else len(text.encode())
