"""The request id travels: a CRI call's id, set by the gRPC front, is the id
every log line of the call shows, in the supervisor and in each worker the
call reaches, so one grep follows the call. Bus message ids, which match
replies, stay apart from it."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from daemonlib import Daemon, poll_until

from podvisor.proto import api_pb2 as api
from podvisor.proto import envelope
from podvisor.proto.envelope import Command
from podvisor.proto.ops import pool_ops
from podvisor.supervisor.bus import BusTiming, PoolBus
from podvisor.supervisor.callvars import NO_CALL, request_id_var

CRI_ID = r"[0-9a-f]{12}"
BACKGROUND_ID = r"bg-[0-9a-f]{8}"


def log_since(daemon: Daemon, offset: int) -> str:
    with open(daemon.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def test_one_grep_follows_a_cri_call_into_the_worker(daemon: Daemon) -> None:
    offset = daemon.log_path.stat().st_size
    reply = daemon.images.ImageStatus(api.ImageStatusRequest(
        image=api.ImageSpec(image="example.invalid/absent:1")), timeout=10)
    assert not reply.HasField("image")

    def worker_logged() -> list[str]:
        return re.findall(rf"\[image worker \d\] \[req=({CRI_ID})\] [\w.]+: "
                          r"Op image\.image_status done", log_since(daemon, offset))
    worker_ids = poll_until(worker_logged, 5, what="the image worker's line for the op")
    text = log_since(daemon, offset)
    supervisor_ids = re.findall(rf"\[supervisor\] \[ImageStatus req=({CRI_ID})\]", text)
    assert len(set(supervisor_ids)) == 1, supervisor_ids
    assert worker_ids == supervisor_ids[:1]
    # The grep itself: the call's lines, from both processes, and no other.
    found = [line for line in text.splitlines() if f"req={worker_ids[0]}]" in line]
    assert any("[supervisor] [ImageStatus req=" in line
               and "Sending image.image_status to image worker" in line for line in found)
    assert any("[image worker" in line for line in found)
    assert all("ImageStatus" in line or "[image worker" in line for line in found), found


def test_ops_no_cri_call_sent_carry_an_id_of_their_own(daemon: Daemon) -> None:
    # The reconcile at start runs before any CRI call.
    text = daemon.log_path.read_text()
    ids = re.findall(rf"\[runtime worker \d\] \[req=({BACKGROUND_ID})\] [\w.]+: "
                     r"Op runtime\.reconcile done", text)
    assert len(ids) == 1, ids
    assert re.search(rf"\[supervisor\] \[- req={ids[0]}\] [\w.]+: Sending runtime\.reconcile",
                     text)


# ---- the bus alone, with fake workers ----------------------------------------


class FakeWorker:
    """A DEALER that joins a runtime bus as worker ``index`` and answers by hand."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, index: int, pid: int) -> None:
        self.index, self.pid = index, pid
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, f"runtime/{index}/{pid}".encode())
        self.sock.connect(endpoint)

    async def ready(self) -> None:
        await self.sock.send_multipart(envelope.encode(Command.READY, {
            "pool": "runtime", "index": self.index, "pid": self.pid,
            "proto": envelope.PROTO_VERSION, "ops": sorted(pool_ops("runtime")),
            "max_inflight": 4}))

    async def next_request(self) -> dict[str, Any]:
        while True:  # heartbeats come in between
            message = envelope.decode(await self.sock.recv_multipart())
            if message.command is Command.REQUEST:
                return message.payload

    async def answer(self, result: Any) -> dict[str, Any]:
        payload = await self.next_request()
        await self.sock.send_multipart(envelope.reply_ok(payload["id"], result))
        return payload


@pytest.fixture
def endpoint() -> Iterator[str]:
    base = Path(tempfile.mkdtemp(prefix="pv-"))
    yield f"ipc://{base}/runtime.sock"
    shutil.rmtree(base, ignore_errors=True)


async def wait_links(bus: PoolBus, count: int) -> None:
    while len(bus.inflight_by_pid()) != count:
        await asyncio.sleep(0.01)


def test_the_bus_sends_the_call_id_and_a_new_bus_id_per_try(endpoint: str) -> None:
    async def scenario() -> None:
        ctx = zmq.asyncio.Context()
        # Heartbeats far apart: the fake workers send none.
        bus = PoolBus("runtime", endpoint, BusTiming(heartbeat_interval=30.0),
                      admit=lambda index, pid: True, on_unresponsive=lambda pid, why: None,
                      is_fatal=lambda: False)
        first, second = FakeWorker(ctx, endpoint, 1, 1001), FakeWorker(ctx, endpoint, 2, 1002)
        try:
            bus.bind(ctx)
            bus.start()
            await first.ready()
            await wait_links(bus, 1)
            request_id_var.set("0123456789ab")
            call = asyncio.create_task(bus.call("runtime.version", {},
                                                deadline=time.monotonic() + 10,
                                                retryable=True))
            sent = await first.next_request()
            await second.ready()
            await wait_links(bus, 2)
            # The first worker dies holding the read: it goes to the second.
            bus.worker_gone(first.pid, "killed by SIGKILL")
            resent = await second.answer({"version": "x"})
            assert await call == {"version": "x"}
            assert sent["call_id"] == resent["call_id"] == "0123456789ab"
            assert sent["id"] != resent["id"]

            request_id_var.set(NO_CALL)
            answering = asyncio.create_task(second.answer({}))
            await bus.call("runtime.version", {}, deadline=time.monotonic() + 10)
            assert re.fullmatch(BACKGROUND_ID, (await answering)["call_id"])
            # The id was this op's only, not the caller's from now on.
            assert request_id_var.get() == NO_CALL
        finally:
            first.sock.close()
            second.sock.close()
            await bus.stop()
            ctx.destroy(linger=0)

    asyncio.run(asyncio.wait_for(scenario(), 20))
