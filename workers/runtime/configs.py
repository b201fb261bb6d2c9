"""The CRI configs a record holds, as the generated protobuf messages.

A sandbox or container record keeps its CRI config as the serialized
protobuf the kubelet sent, base64 under ``config_pb``: inside the JSON
record rather than in a file beside it, so one atomic rename still writes
the whole record (workers/records.py) and there is no second file for a
crash to tear from it. Each read parses it with the generated stubs.

Records written by builds before this one hold ``config``, the message as
``MessageToDict`` made it. ``upgrade`` turns those into the new form once,
in the start-up reconcile (reconcile.py), before any op reads them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, MutableMapping
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from ...proto import api_pb2 as api
from ...proto.errors import Internal, InvalidArgument

M = TypeVar("M", bound=Message)

FIELD = "config_pb"
LEGACY_FIELD = "config"


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """The CRI's label selector: every key present with that value."""
    return all(labels.get(key) == value for key, value in selector.items())


def parse(kind: type[M], data: bytes, what: str) -> M:
    """A CRI message that arrived serialized; INVALID_ARGUMENT if it does
    not parse."""
    try:
        return kind.FromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"{what} is not a serialized {kind.__name__}: {exc}") from None


def stored(data: bytes) -> str:
    """``data`` (a serialized config) as the record keeps it."""
    return base64.b64encode(data).decode("ascii")


def container_config(record: Mapping[str, Any]) -> api.ContainerConfig:
    """The ContainerConfig of a container record."""
    return _load(api.ContainerConfig, record)


def sandbox_config(record: Mapping[str, Any]) -> api.PodSandboxConfig:
    """The PodSandboxConfig of a sandbox record."""
    return _load(api.PodSandboxConfig, record)


def _load(kind: type[M], record: Mapping[str, Any]) -> M:
    try:
        return kind.FromString(base64.b64decode(record[FIELD], validate=True))
    except KeyError:
        # Only a record of an older build that the start-up reconcile
        # could not upgrade gets here.
        raise Internal(f"the record of {record.get('id')} has no {FIELD}; it was written by "
                       "an older podvisor and not upgraded (see the runtime reconcile's "
                       "log)") from None
    except (binascii.Error, ValueError, DecodeError) as exc:
        raise Internal(f"the record of {record.get('id')} holds a corrupt config: "
                       f"{exc}") from None


def upgrade(record: MutableMapping[str, Any], kind: type[Message]) -> bool:
    """Turn a record of an older build (``config`` as a MessageToDict dict)
    into this build's form; False when it needs nothing, ValueError when
    its config does not parse."""
    legacy = record.get(LEGACY_FIELD)
    if FIELD in record or not isinstance(legacy, dict):
        return False
    try:
        message = json_format.ParseDict(legacy, kind(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValueError(f"its config does not parse: {exc}") from None
    record[FIELD] = stored(message.SerializeToString())
    del record[LEGACY_FIELD]
    return True
