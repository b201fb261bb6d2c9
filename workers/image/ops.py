"""Ops of the image pool (registry pulls, the image store).

Nothing is implemented yet: every image op is answered UNIMPLEMENTED by the
worker base until issue 3 lands.
"""

from __future__ import annotations

from ..base import OpTable

OPS: OpTable = {}
