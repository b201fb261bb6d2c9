"""Ops of the storage pool (layer unpack, rootfs mounts, disk usage).

Nothing is implemented yet: every storage op is answered UNIMPLEMENTED by the
worker base until issue 3 lands.
"""

from __future__ import annotations

from ..base import OpTable

OPS: OpTable = {}
