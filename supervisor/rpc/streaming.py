"""ExecSync; Exec, Attach and PortForward (the streaming server) are routed
to their pools, which answer UNIMPLEMENTED until the streaming issue lands.
"""

from __future__ import annotations

from ...proto import api_pb2 as api
from .call import Call, route


async def exec_sync(call: Call, request: api.ExecSyncRequest) -> api.ExecSyncResponse:
    # The command's own timeout is enforced by podvisor-conmon (it kills and
    # reaps the command); the call's deadline bounds everything else.
    result = await call.op("runtime.container_exec_sync", {
        "id": request.container_id, "cmd": list(request.cmd), "timeout": request.timeout})
    return api.ExecSyncResponse(stdout=result["stdout"], stderr=result["stderr"],
                                exit_code=result["exit_code"])


async def exec(call: Call, request: api.ExecRequest) -> api.ExecResponse:
    return await route(call, "Exec", request, api.ExecResponse)


async def attach(call: Call, request: api.AttachRequest) -> api.AttachResponse:
    return await route(call, "Attach", request, api.AttachResponse)


async def port_forward(call: Call, request: api.PortForwardRequest) -> api.PortForwardResponse:
    return await route(call, "PortForward", request, api.PortForwardResponse)
