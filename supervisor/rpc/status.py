"""The one place where bus errors become gRPC statuses.

Handlers raise ``BusError`` (from a worker or from the bus itself);
``grpc_code`` maps its ``Code`` to ``grpc.StatusCode`` by number, so any
code a worker may choose reaches the kubelet unchanged.
"""

from __future__ import annotations

import grpc

from ...proto.codes import Code

_BY_NUMBER: dict[int, grpc.StatusCode] = {sc.value[0]: sc for sc in grpc.StatusCode}


def grpc_code(code: Code) -> grpc.StatusCode:
    return _BY_NUMBER.get(int(code), grpc.StatusCode.UNKNOWN)
