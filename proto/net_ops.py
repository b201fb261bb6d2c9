"""The ops of the net pool: pod networks.

Each op is declared once, with its argument and result types
(proto/contract.py).
"""

from __future__ import annotations

from .contract import Op, Untyped

STATUS = Op("net.status", Untyped, Untyped, read_only=True)
SETUP = Op("net.setup", Untyped, Untyped, idempotent=True)
TEARDOWN = Op("net.teardown", Untyped, Untyped, idempotent=True)
POD_STATUS = Op("net.pod_status", Untyped, Untyped, read_only=True)
RECONCILE = Op("net.reconcile", Untyped, Untyped)

OPS = (
    STATUS, SETUP, TEARDOWN, POD_STATUS, RECONCILE,
)
