"""Layer identities shared by the image pool, the storage pool and the
supervisor: the OCI image-spec chain id.

A layer's chain id names it together with everything under it, so the same
diff over different parents is a different unpacked layer:

    ChainID(L0)  = DiffID(L0)
    ChainID(Ln)  = sha256(ChainID(Ln-1) + " " + DiffID(Ln))
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def chain_id(parent: str | None, diff_id: str) -> str:
    """The chain id of a layer with ``diff_id`` over ``parent`` (a chain id)."""
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The chain ids of an image's layers, bottom to top."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(chain_id(out[-1] if out else None, diff_id))
    return out
