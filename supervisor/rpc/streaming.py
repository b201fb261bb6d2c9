"""Exec, Attach and PortForward: a URL on the streaming server.

Each is two bus calls: the runtime pool checks the request against the
container or pod and answers a plan (proto/stream_ops.py), then the stream
pool keeps the plan behind a single-use token and answers the URL. The
client's streams start only when it connects to that URL, so nothing runs
for a URL that is never used.
"""

from __future__ import annotations

from ...proto import api_pb2 as api
from ...proto import runtime_ops, stream_ops
from ...proto.errors import InvalidArgument
from ...proto.stream_ops import Session, Streams
from ..opclient import OpClient

# TCP ports as PortForward names them; the CRI carries them as int32.
PORT_MIN, PORT_MAX = 1, 65535


class StreamingService:
    def __init__(self, ops: OpClient) -> None:
        self.ops = ops

    async def exec(self, request: api.ExecRequest) -> api.ExecResponse:
        plan = await self.ops(runtime_ops.EXEC_PLAN, runtime_ops.StreamRequest(
            id=request.container_id, streams=_streams(request), cmd=list(request.cmd)))
        return api.ExecResponse(url=await self._issue(Session(
            kind=stream_ops.EXEC, streams=_streams(request), exec=plan)))

    async def attach(self, request: api.AttachRequest) -> api.AttachResponse:
        plan = await self.ops(runtime_ops.ATTACH_PLAN, runtime_ops.StreamRequest(
            id=request.container_id, streams=_streams(request)))
        return api.AttachResponse(url=await self._issue(Session(
            kind=stream_ops.ATTACH, streams=_streams(request), attach=plan)))

    async def port_forward(self, request: api.PortForwardRequest) -> api.PortForwardResponse:
        for port in request.port:
            if not PORT_MIN <= port <= PORT_MAX:
                raise InvalidArgument(f"port {port} is not a TCP port ({PORT_MIN}-{PORT_MAX})")
        plan = await self.ops(runtime_ops.PORT_FORWARD_PLAN,
                              runtime_ops.Ref(id=request.pod_sandbox_id))
        return api.PortForwardResponse(url=await self._issue(Session(
            kind=stream_ops.PORT_FORWARD, forward=plan, ports=list(request.port))))

    async def _issue(self, session: Session) -> str:
        return (await self.ops(stream_ops.ISSUE, session)).url


def _streams(request: api.ExecRequest | api.AttachRequest) -> Streams:
    return Streams(stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
                   tty=request.tty)
