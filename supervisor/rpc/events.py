"""GetContainerEvents: the stream the kubelet's evented PLEG reads.

Events are produced by the handlers and the exit watcher (see
supervisor/container_events.py); a call subscribes until the client goes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...proto import api_pb2 as api
from .call import Call


def get_container_events(
    call: Call, request: api.GetEventsRequest
) -> AsyncIterator[api.ContainerEventResponse]:
    return call.events.subscribe()
