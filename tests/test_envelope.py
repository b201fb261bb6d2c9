"""The bus envelope: round trips, and every kind of malformed frame refused."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from podvisor.proto import envelope
from podvisor.proto.codes import Code
from podvisor.proto.envelope import Command
from podvisor.proto.errors import (
    BusError,
    NotFound,
    ProtocolError,
    Unavailable,
    from_wire,
)

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


call_ids = st.text("0123456789abcdefABCDEF-", min_size=1, max_size=envelope.CALL_ID_MAX)


@given(op=st.text(min_size=1), args=st.dictionaries(st.text(), json_like, max_size=5),
       deadline=st.floats(0, 1e9, allow_nan=False), call_id=call_ids)
def test_request_round_trip(op: str, args: dict[str, object], deadline: float,
                            call_id: str) -> None:
    message = envelope.decode(envelope.request(op, args, deadline=deadline, call_id=call_id))
    assert message.payload.keys() == {"id", "op", "args", "deadline", "call_id"}
    assert message.command is Command.REQUEST
    assert message.payload["op"] == op and message.payload["args"] == args
    assert message.payload["deadline"] == deadline and message.payload["call_id"] == call_id
    assert len(message.payload["id"]) == envelope.ID_SIZE


def test_a_request_outside_any_call_carries_the_no_call_id() -> None:
    message = envelope.decode(envelope.request("runtime.version", {}, deadline=1.0))
    assert message.payload["call_id"] == envelope.NO_CALL_ID == "-"


def request_with(**fields: object) -> list[bytes]:
    payload = {"id": b"x" * 16, "op": "x", "args": {}, "deadline": 1.0, "call_id": "a1", **fields}
    return [b"", b"PV1", b"\x02", msgpack.packb(payload)]


@pytest.mark.parametrize("call_id", [
    "", " ", "a b", "abc\n", "ab\x1b[31m", "req=1", "\u00e9t\u00e9",
    "a" * (envelope.CALL_ID_MAX + 1), 5, None, b"abc",
], ids=repr)
def test_a_call_id_that_is_not_a_log_id_is_refused(call_id: object) -> None:
    # It lands in every log line of the op: nothing there may forge a line
    # or a field, and it has a size.
    with pytest.raises(ProtocolError, match="call_id"):
        envelope.decode(request_with(call_id=call_id))


def test_a_request_of_protocol_1_is_refused() -> None:
    # Version 1 carried key and attempt, and no call id.
    old = {"id": b"x" * 16, "op": "x", "args": {}, "deadline": 1.0, "attempt": 1, "key": None}
    with pytest.raises(ProtocolError, match="lacks 'call_id'"):
        envelope.decode([b"", b"PV1", b"\x02", msgpack.packb(old)])
    assert envelope.PROTO_VERSION == 2


@given(result=json_like)
def test_reply_round_trip(result: object) -> None:
    rid = envelope.new_id()
    message = envelope.decode(envelope.reply_ok(rid, result))
    assert message.payload == {"id": rid, "result": result}


def test_error_reply_rebuilds_the_class_by_code() -> None:
    rid = envelope.new_id()
    message = envelope.decode(envelope.reply_error(rid, NotFound("no pod x").to_wire()))
    error = from_wire(message.payload["error"])
    assert isinstance(error, NotFound) and error.message == "no pod x"
    odd = from_wire({"code": 10, "message": "aborted"})
    assert type(odd) is BusError and odd.code is Code.ABORTED
    assert from_wire({"code": 999}).code is Code.UNKNOWN
    assert Unavailable("x").code == 14


def test_heartbeat_has_an_empty_payload() -> None:
    frames = envelope.encode(Command.HEARTBEAT)
    assert frames == [b"", b"PV1", b"\x04", b""]
    assert envelope.decode(frames).payload == {}


def good_request() -> list[bytes]:
    return envelope.request("runtime.version", {}, deadline=1.0)


@pytest.mark.parametrize("frames", [
    [],
    [b"", b"PV1", b"\x02"],
    [*good_request(), b"extra"],
    [b"x", b"PV1", b"\x02", b""],
    [b"", b"PV2", b"\x02", good_request()[3]],
    [b"", b"PV1", b"\x00", b""],
    [b"", b"PV1", b"\x02\x02", b""],
    [b"", b"PV1", b"\x02", b"\xc1"],
    [b"", b"PV1", b"\x02", msgpack.packb([1, 2])],
    [b"", b"PV1", b"\x02", msgpack.packb({"op": "x"})],
    request_with(id=b"short"),
    request_with(op=5),
    request_with(deadline=True),
    request_with(args=[]),
    [b"", b"PV1", b"\x03", msgpack.packb({"id": b"x" * 16})],
    [b"", b"PV1", b"\x03", msgpack.packb({"id": b"x" * 16, "result": 1, "error": {}})],
    [b"", b"PV1", b"\x03", msgpack.packb({"id": b"x" * 16, "error": "boom"})],
    [b"", b"PV1", b"\x02", msgpack.packb({1: 2})],
], ids=lambda f: repr(f)[:40])
def test_malformed_frames_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        envelope.decode(frames)


def test_oversize_payload_is_refused() -> None:
    frames = [b"", b"PV1", b"\x02", b"\x00" * (envelope.MAX_PAYLOAD + 1)]
    with pytest.raises(ProtocolError, match="exceeds"):
        envelope.decode(frames)


@given(st.lists(st.binary(max_size=64), max_size=6))
def test_arbitrary_bytes_never_escape_as_another_error(frames: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):
        envelope.decode(frames)
