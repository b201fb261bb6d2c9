"""CRI messages built from what the runtime pool answers, shared by the RPC
handlers and the container event stream."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from ...proto import api_pb2 as api

M = TypeVar("M", bound=Message)

STATES = {"ready": api.SANDBOX_READY, "notready": api.SANDBOX_NOTREADY}


def sandbox_status(record: Mapping[str, Any]) -> api.PodSandboxStatus:
    config = record["config"]
    ips = record["ips"]
    status = api.PodSandboxStatus(
        id=record["id"], state=STATES[record["state"]], created_at=record["created_at"],
        labels=config.get("labels", {}), annotations=config.get("annotations", {}),
        runtime_handler=record["runtime_handler"])
    fill_metadata(status.metadata, config.get("metadata", {}))
    if ips:
        status.network.ip = ips[0]
        status.network.additional_ips.extend(api.PodIP(ip=ip) for ip in ips[1:])
    modes = record["modes"]
    # Enum fields take their names: the record keeps the CRI's own spelling.
    status.linux.namespaces.options.CopyFrom(api.NamespaceOption(
        network=modes["network"], pid=modes["pid"], ipc=modes["ipc"]))
    return status


def fill_metadata(target: api.PodSandboxMetadata, meta: Mapping[str, Any]) -> None:
    target.name = meta.get("name", "")
    target.uid = meta.get("uid", "")
    target.namespace = meta.get("namespace", "")
    target.attempt = int(meta.get("attempt", 0))


def to_args(request: Message) -> dict[str, Any]:
    """A CRI message as the plain dict the bus carries (proto field names)."""
    return json_format.MessageToDict(request, preserving_proto_field_name=True)


def from_result(result: dict[str, Any], response_type: Callable[[], M]) -> M:
    """Build a CRI message from the dict a worker returned (proto field names)."""
    return json_format.ParseDict(result, response_type(), ignore_unknown_fields=False)
