"""The streaming server's pure parts: tokens, statuses, resize messages,
and the runtime pool's checks of a streaming request."""

from __future__ import annotations

import asyncio
import json

import pytest

from podvisor.proto.errors import InvalidArgument, ResourceExhausted
from podvisor.proto.stream_ops import EXEC, PORT_FORWARD, PortForwardPlan, Session, Streams
from podvisor.workers.runtime.streaming import check_streams
from podvisor.workers.stream import remotecommand, server
from podvisor.workers.stream.tokens import Tokens

SESSION = Session(kind=EXEC)


def test_a_token_is_used_once_and_only_for_its_kind() -> None:
    tokens = Tokens(ttl=60, limit=10)
    token = tokens.issue(SESSION)
    assert len(token) >= 22 and len(tokens) == 1
    assert tokens.consume(PORT_FORWARD, token) is None
    # A wrong-kind use spends it too: a URL is good for one request.
    assert tokens.consume(EXEC, token) is None
    other = tokens.issue(SESSION)
    assert tokens.consume(EXEC, other) == SESSION
    assert tokens.consume(EXEC, other) is None
    assert len(tokens) == 0


def test_tokens_expire_after_their_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("podvisor.workers.stream.tokens.time.monotonic", lambda: now[0])
    tokens = Tokens(ttl=60, limit=10)
    token = tokens.issue(SESSION)
    now[0] += 59.9
    kept = tokens.issue(SESSION)
    now[0] += 0.2
    assert tokens.consume(EXEC, token) is None
    assert tokens.consume(EXEC, kept) == SESSION


def test_outstanding_tokens_are_bounded() -> None:
    tokens = Tokens(ttl=60, limit=2)
    tokens.issue(SESSION)
    tokens.issue(SESSION)
    with pytest.raises(ResourceExhausted, match="2 streaming URLs are outstanding"):
        tokens.issue(SESSION)


def test_exit_statuses_are_the_kubelets() -> None:
    assert remotecommand.exit_status(0)["status"] == "Success"
    status = remotecommand.exit_status(3)
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
    json.dumps(status)


@pytest.mark.parametrize("line, size", [
    (b'{"Width":80,"Height":24}', (80, 24)),
    (b'{"Width":0,"Height":65535}', (0, 65535)),
    (b'{"Width":-1,"Height":24}', None),
    (b'{"Width":80}', None),
    (b'{"Width":"80","Height":24}', None),
    (b"not json", None),
    (b"[1, 2]", None),
    (b"   ", None),
])
def test_resize_messages(line: bytes, size: tuple[int, int] | None) -> None:
    assert remotecommand.parse_size(line) == size


def test_resize_events_split_anywhere_and_skip_the_malformed() -> None:
    chunks = [b'{"Width":1', b'0,"Height":20}\n{bad}\n', b"x" * 5000, b'\n{"Width":3,',
              b'"Height":4}', b""]

    async def read() -> bytes:
        return chunks.pop(0)

    async def collect() -> list[tuple[int, int]]:
        return [size async for size in remotecommand.resize_events(read)]

    assert asyncio.run(collect()) == [(10, 20), (3, 4)]


@pytest.mark.parametrize("streams, message", [
    (Streams(), "one of stdin, stdout and stderr is required"),
    (Streams(stdout=True, stderr=True, tty=True), "tty and stderr cannot both be set"),
])
def test_streaming_requests_are_checked(streams: Streams, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_streams(streams)


def test_port_forward_ports_from_the_query() -> None:
    assert server._query_ports("/portforward/t?port=80&port=443,8080") == [80, 443, 8080]
    assert server._query_ports("/portforward/t?port=0&port=70000&port=x") == []
    assert server._query_ports("/portforward/t") == []
    assert Session(kind=PORT_FORWARD, forward=PortForwardPlan(sandbox_id="p", netns=""),
                   ports=[80]).ports == [80]
