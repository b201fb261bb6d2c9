"""GetContainerEvents.

Routed to the owning pool, which answers UNIMPLEMENTED until the issue
that implements them lands (issues 3 and 5).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...proto import api_pb2 as api
from .call import Call, route_stream


def get_container_events(
    call: Call, request: api.GetEventsRequest
) -> AsyncIterator[api.ContainerEventResponse]:
    return route_stream(call, "GetContainerEvents", request, api.ContainerEventResponse)
