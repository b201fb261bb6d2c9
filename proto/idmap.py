"""User namespace id maps as ops carry them (the CRI's ``IDMapping``).

One home for the shape: the runtime pool answers a pod's maps, the storage
pool idmaps a rootfs's layers with them, workers/userns.py writes them.
"""

from __future__ import annotations

from .contract import Record


class IdRange(Record, frozen=True, kw_only=True):
    """One line of a uid_map or gid_map."""

    container_id: int
    host_id: int
    length: int

    def line(self) -> str:
        return f"{self.container_id} {self.host_id} {self.length}\n"


class IdMap(Record, frozen=True, kw_only=True):
    """A pod's user namespace maps (mode POD): one range each today."""

    uids: list[IdRange]
    gids: list[IdRange]
