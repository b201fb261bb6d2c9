"""The Stream* forms of the list RPCs: the same answer as the List* RPC,
sent in parts, so a node with many objects never hits a client's message
size limit (the kubelet's default is 16 MiB)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# Objects per streamed message: a pod's or container's status with large
# annotations stays well under the limit at this count.
CHUNK = 100


def chunked(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in parts of ``size``; one empty part for no items, so the
    client still gets an answer."""
    if not items:
        yield items
        return
    for start in range(0, len(items), size):
        yield items[start:start + size]
