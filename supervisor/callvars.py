"""The logging context of the call a supervisor task serves: the CRI RPC and
its request id.

The gRPC front sets both when a CRI call arrives (grpc_server.Front), logs.py
puts them in every record, and the bus sends the request id with each op it
carries for the call (proto/envelope.py, ``call_id``), where the worker logs
it too: one grep for the id follows a CRI call through every process.

Work that no CRI call started (the reconcile at start, the container event
feed) runs with ``NO_CALL``; the bus gives each op of such work a short id
of its own (bus.py, ``PoolBus.call``).

A module of their own so that bus.py and logs.py read them without
importing the gRPC front.
"""

from __future__ import annotations

import contextvars

NO_CALL = "-"

rpc_var: contextvars.ContextVar[str] = contextvars.ContextVar("rpc", default=NO_CALL)
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id",
                                                                     default=NO_CALL)
