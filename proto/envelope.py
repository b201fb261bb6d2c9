"""The bus envelope: how one message is laid out in ZeroMQ frames.

A worker's DEALER sends, and receives, exactly four frames::

    +-------+-------+-----+-----------------------------+
    | ""    | "PV1" | cmd | payload                     |
    +-------+-------+-----+-----------------------------+
      empty   tag     one   msgpack map (empty bytes for
      delim   +ver    byte  HEARTBEAT)

The supervisor's ROUTER sees the worker's routing id in front of them and
puts it back in front when it sends. The command byte stays in its own frame
so heartbeats are handled without decoding msgpack (Majordomo, RFC 7/MDP).

Payloads by command:

    READY       {pool, index, pid, proto, ops, max_inflight}
    REQUEST     {id, op, args, deadline, call_id}
    REPLY       {id, result} or {id, error: {code, message, details}}
    HEARTBEAT   empty
    DISCONNECT  {} (a worker leaving on purpose) or empty
    CANCEL      {id}  (the caller has gone; stop working on it)

``id`` is 16 random bytes, new for every send: replies are matched by it.
``call_id`` is the id the logs show for the call the request serves (the
supervisor's CRI request id, or ``NO_CALL_ID``), at most ``CALL_ID_MAX``
letters, digits and dashes; the worker logs its work under it, so one grep
follows a CRI call into every worker it reaches. ``deadline`` is an absolute
CLOCK_MONOTONIC value in seconds: that clock is shared by every process of
one Linux host and no wall-clock jump moves it. ``decode`` trusts nothing:
it checks the frame count, tag, command byte, size, map keys and value
types, and raises ``ProtocolError`` on anything else.

``ops`` in READY is the worker's op table; the supervisor admits a worker
only when it is exactly the catalogue's list for its pool (proto/ops.py),
so a worker of another build never gets an op it does not know.

Size: a payload may have ``payload_limit(m)`` bytes, where ``m`` is the
largest CRI message the gRPC front receives or sends, so whatever gRPC
accepts fits on the bus with its envelope. The supervisor computes it and
hands it to workers in their settings; both ends use the same number.
A payload over it is refused by its receiver, which would leave the request
unanswered until its deadline, so the sender checks first (``check_size``)
and fails the call at once with RESOURCE_EXHAUSTED.

Fence: every worker holds a shared flock on ``<runroot>/FENCE_FILE`` for its
whole life. A supervisor takes it exclusively, killing the holders it
finds, before it starts its own workers, so no worker of a dead supervisor
still acts (finishes a create, replies from an unknown peer) once the new
one serves.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import ProtocolError, ResourceExhausted

TAG = b"PV1"
FENCE_FILE = "workers.fence"
PROTO_VERSION = 2
MAX_PAYLOAD = 64 * 1024 * 1024
"""The least payload limit: bus-internal answers (whole records) may be
bigger than any CRI message, even under a small gRPC limit."""
ENVELOPE_OVERHEAD = 64 * 1024
"""Room for the envelope's own fields and the keys an op adds around the
CRI message it carries."""
ID_SIZE = 16
NO_CALL_ID = "-"
CALL_ID_MAX = 32
# It lands verbatim in log lines: no spaces, quotes or control characters.
_CALL_ID = re.compile(rf"[-0-9A-Za-z]{{1,{CALL_ID_MAX}}}")


class Command(enum.IntEnum):
    READY = 0x01
    REQUEST = 0x02
    REPLY = 0x03
    HEARTBEAT = 0x04
    DISCONNECT = 0x05
    CANCEL = 0x06


@dataclass(frozen=True)
class Message:
    """One decoded bus message; ``payload`` has been validated for ``command``."""

    command: Command
    payload: dict[str, Any] = field(default_factory=dict)


# Required keys and the types their values must have, per command.
_SCHEMA: dict[Command, dict[str, tuple[type, ...]]] = {
    Command.READY: {"pool": (str,), "index": (int,), "pid": (int,), "proto": (int,),
                    "ops": (list,), "max_inflight": (int,)},
    Command.REQUEST: {"id": (bytes,), "op": (str,), "args": (dict,),
                      "deadline": (float, int), "call_id": (str,)},
    Command.REPLY: {"id": (bytes,)},
    Command.HEARTBEAT: {},
    Command.DISCONNECT: {},
    Command.CANCEL: {"id": (bytes,)},
}


def payload_limit(max_message: int) -> int:
    """The payload limit for CRI messages of up to ``max_message`` bytes."""
    return max(MAX_PAYLOAD, max_message + ENVELOPE_OVERHEAD)


def check_size(frames: list[bytes], limit: int, what: str) -> None:
    """Raise ``ResourceExhausted`` when the payload of ``frames`` (from
    ``encode``) is over ``limit``: the receiver would drop it unanswered."""
    size = len(frames[-1])
    if size > limit:
        raise ResourceExhausted(f"{what} takes {size} bytes on the bus, over its limit "
                                f"of {limit}")


def new_id() -> bytes:
    """Return a fresh request id."""
    return os.urandom(ID_SIZE)


def encode(command: Command, payload: dict[str, Any] | None = None) -> list[bytes]:
    """Return the frames (without routing id) for one message."""
    body = b"" if not payload else msgpack.packb(payload, use_bin_type=True)
    return [b"", TAG, bytes([command]), body]


def request(op: str, args: dict[str, Any], *, deadline: float,
            call_id: str = NO_CALL_ID, request_id: bytes | None = None) -> list[bytes]:
    """Return the frames of a REQUEST; ``call_id`` must be valid (see
    ``CALL_ID_MAX``) or the receiver refuses the message."""
    return encode(Command.REQUEST, {
        "id": request_id or new_id(), "op": op, "args": args,
        "deadline": float(deadline), "call_id": call_id,
    })


def reply_ok(request_id: bytes, result: Any) -> list[bytes]:
    """Return the frames of a successful REPLY."""
    return encode(Command.REPLY, {"id": request_id, "result": result})


def reply_error(request_id: bytes, error: dict[str, Any]) -> list[bytes]:
    """Return the frames of a failed REPLY; ``error`` is ``BusError.to_wire()``."""
    return encode(Command.REPLY, {"id": request_id, "error": error})


def decode(frames: list[bytes], limit: int = MAX_PAYLOAD) -> Message:
    """Validate and decode the four frames a peer sent (routing id removed);
    ``limit`` is the payload limit both ends were given."""
    if len(frames) != 4:
        raise ProtocolError(f"expected 4 frames, got {len(frames)}")
    delim, tag, cmd, body = frames
    if delim != b"":
        raise ProtocolError("missing empty delimiter frame")
    if tag != TAG:
        raise ProtocolError(f"bad protocol tag {tag[:16]!r}")
    if len(cmd) != 1 or cmd[0] not in Command._value2member_map_:
        raise ProtocolError(f"bad command frame {cmd[:16]!r}")
    command = Command(cmd[0])
    if len(body) > limit:
        raise ProtocolError(f"payload of {len(body)} bytes exceeds {limit}")
    payload = _unpack(body) if body else {}
    _check_schema(command, payload)
    return Message(command, payload)


def _unpack(body: bytes) -> dict[str, Any]:
    try:
        # The size was checked above; unpackb bounds its containers by it.
        payload = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise ProtocolError(f"payload is not msgpack: {type(exc).__name__}") from exc
    if not isinstance(payload, dict):
        raise ProtocolError(f"payload is a {type(payload).__name__}, not a map")
    return payload


def _check_schema(command: Command, payload: dict[str, Any]) -> None:
    for key, types in _SCHEMA[command].items():
        if key not in payload:
            raise ProtocolError(f"{command.name} lacks {key!r}")
        value = payload[key]
        # bool is an int subclass; no schema field is a bool.
        if isinstance(value, bool) or not isinstance(value, types):
            raise ProtocolError(f"{command.name}.{key} has type {type(value).__name__}")
    if "id" in payload and len(payload["id"]) != ID_SIZE:
        raise ProtocolError(f"{command.name}.id is {len(payload['id'])} bytes")
    if command is Command.REQUEST and not _CALL_ID.fullmatch(payload["call_id"]):
        raise ProtocolError(f"REQUEST.call_id {payload['call_id'][:CALL_ID_MAX + 1]!r} is "
                            "not a log id")
    if command is Command.REPLY and ("result" in payload) == ("error" in payload):
        raise ProtocolError("REPLY needs exactly one of result and error")
    if command is Command.REPLY and "error" in payload and not isinstance(payload["error"], dict):
        raise ProtocolError("REPLY.error is not a map")
