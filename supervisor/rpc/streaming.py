"""ExecSync, Exec, Attach, PortForward.

Routed to the owning pool, which answers UNIMPLEMENTED until the issue
that implements them lands (issues 3 and 5).
"""

from __future__ import annotations

from ...proto import api_pb2 as api
from .call import Call, route


async def exec_sync(call: Call, request: api.ExecSyncRequest) -> api.ExecSyncResponse:
    return await route(call, "ExecSync", request, api.ExecSyncResponse)


async def exec(call: Call, request: api.ExecRequest) -> api.ExecResponse:
    return await route(call, "Exec", request, api.ExecResponse)


async def attach(call: Call, request: api.AttachRequest) -> api.AttachResponse:
    return await route(call, "Attach", request, api.AttachResponse)


async def port_forward(call: Call, request: api.PortForwardRequest) -> api.PortForwardResponse:
    return await route(call, "PortForward", request, api.PortForwardResponse)
