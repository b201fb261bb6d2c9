"""The ops of the runtime pool: node answers, pod sandboxes, containers.

Each op is declared once, with its argument and result types
(proto/contract.py).
"""

from __future__ import annotations

from .contract import Op, Untyped

VERSION = Op("runtime.version", Untyped, Untyped, read_only=True)
STATUS = Op("runtime.status", Untyped, Untyped, read_only=True)
RUNTIME_CONFIG = Op("runtime.runtime_config", Untyped, Untyped, read_only=True)
SANDBOX_RESERVE = Op("runtime.sandbox_reserve", Untyped, Untyped, idempotent=True)
SANDBOX_START = Op("runtime.sandbox_start", Untyped, Untyped)
SANDBOX_STOP_CONTAINERS = Op("runtime.sandbox_stop_containers", Untyped, Untyped)
SANDBOX_STOP = Op("runtime.sandbox_stop", Untyped, Untyped, idempotent=True)
SANDBOX_REMOVE = Op("runtime.sandbox_remove", Untyped, Untyped, idempotent=True)
SANDBOX_STATUS = Op("runtime.sandbox_status", Untyped, Untyped, read_only=True)
SANDBOX_LIST = Op("runtime.sandbox_list", Untyped, Untyped, read_only=True)
CONTAINER_RESERVE = Op("runtime.container_reserve", Untyped, Untyped, idempotent=True)
CONTAINER_CREATE = Op("runtime.container_create", Untyped, Untyped)
CONTAINER_START = Op("runtime.container_start", Untyped, Untyped)
CONTAINER_STOP = Op("runtime.container_stop", Untyped, Untyped)
CONTAINER_REMOVE = Op("runtime.container_remove", Untyped, Untyped, idempotent=True)
CONTAINER_STATUS = Op("runtime.container_status", Untyped, Untyped, read_only=True)
CONTAINER_LIST = Op("runtime.container_list", Untyped, Untyped, read_only=True)
CONTAINER_EXEC_SYNC = Op("runtime.container_exec_sync", Untyped, Untyped)
CONTAINER_REOPEN_LOG = Op("runtime.container_reopen_log", Untyped, Untyped)
RECONCILE = Op("runtime.reconcile", Untyped, Untyped)
EXITS_SINCE = Op("runtime.exits_since", Untyped, Untyped, read_only=True)

OPS = (
    VERSION, STATUS, RUNTIME_CONFIG, SANDBOX_RESERVE, SANDBOX_START, SANDBOX_STOP_CONTAINERS,
    SANDBOX_STOP, SANDBOX_REMOVE, SANDBOX_STATUS, SANDBOX_LIST, CONTAINER_RESERVE,
    CONTAINER_CREATE, CONTAINER_START, CONTAINER_STOP, CONTAINER_REMOVE, CONTAINER_STATUS,
    CONTAINER_LIST, CONTAINER_EXEC_SYNC, CONTAINER_REOPEN_LOG, RECONCILE, EXITS_SINCE,
)
