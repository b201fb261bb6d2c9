"""A real storage worker process on a real bus: it advertises every storage
op, serves them from its thread pool, and answers errors with their codes.
The test plays the supervisor's ROUTER side of the envelope."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from daemonlib import poll_until
from layers import LayerTar, Storage, storage_in

from podvisor.proto import api_pb2 as api
from podvisor.proto import envelope
from podvisor.proto.codes import Code
from podvisor.proto.envelope import Command
from podvisor.proto.ops import CATALOGUE

STORAGE_OPS = sorted(op for op in CATALOGUE if op.startswith("storage."))


class Bus:
    """The supervisor's end of one storage worker's bus."""

    def __init__(self, sock: zmq.Socket[bytes], proc: subprocess.Popen[bytes]) -> None:
        self.sock = sock
        self.proc = proc
        self.peer = b""

    def receive(self, timeout: float = 20.0) -> envelope.Message:
        """The next message other than a heartbeat."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "the worker went quiet"
            if not self.sock.poll(int(left * 1000)):
                continue
            peer, *frames = self.sock.recv_multipart()
            self.peer = peer
            message = envelope.decode(frames)
            if message.command is not Command.HEARTBEAT:
                return message

    def send(self, op: str, args: dict[str, Any]) -> None:
        frames = envelope.request(op, args, deadline=time.monotonic() + 30)
        self.sock.send_multipart([self.peer, *frames])

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.send(op, args)
        reply = self.receive()
        assert reply.command is Command.REPLY
        return reply.payload


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    yield from storage_in(tmp_path)


@pytest.fixture
def bus(storage: Storage) -> Iterator[Bus]:
    settings = {**storage.settings, "python_log_level": "DEBUG", "log_format": "text",
                "bus_max_payload": envelope.MAX_PAYLOAD,
                "workers": {"max_inflight": 4, "heartbeat_interval": 5.0,
                            "heartbeat_liveness": 6, "stop_timeout": 5.0}}
    settings_path = storage.base / "worker-settings.json"
    settings_path.write_text(json.dumps(settings))
    endpoint = f"ipc://{storage.base}/storage.sock"
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    log = open(storage.base / "worker.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "podvisor.workers.storage", "--index", "1",
         "--endpoint", endpoint, "--settings", str(settings_path),
         "--parent-pid", str(os.getpid())],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    try:
        yield Bus(sock, proc)
    finally:
        killed = proc.poll() == -signal.SIGKILL
        proc.terminate()  # SIGTERM: the worker's orderly stop, exit status 0
        status = proc.wait(timeout=20)
        assert killed or status == 0, (storage.base / "worker.log").read_text()
        sock.close()
        ctx.term()


def test_the_worker_serves_the_storage_ops(bus: Bus, storage: Storage) -> None:
    ready = bus.receive()
    assert ready.command is Command.READY
    assert ready.payload["pool"] == "storage"
    assert ready.payload["ops"] == STORAGE_OPS

    blob = storage.blob(LayerTar().file("hello", b"world"), "zstd")
    reply = bus.call("storage.unpack_layers", {"layers": [blob.args()]})
    [done] = reply["result"]["layers"]
    assert done["unpacked"] is True
    assert Path(done["path"], "hello").read_bytes() == b"world"

    reply = bus.call("storage.create_rootfs", {"container_id": "bus-1",
                                               "layers": [blob.diff_id]})
    assert Path(reply["result"]["path"], "hello").read_bytes() == b"world"
    info = bus.call("storage.image_fs_info", {})["result"]
    assert api.ImageFsInfoResponse.FromString(info["response"]).image_filesystems
    assert bus.call("storage.remove_rootfs", {"container_id": "bus-1"})["result"]["removed"]

    error = bus.call("storage.unpack_layers",
                     {"layers": [{**blob.args(), "diff_id": "nope"}]})["error"]
    assert error["code"] == Code.INVALID_ARGUMENT and "diff_id" in error["message"]
    error = bus.call("storage.remove_layer", {"chain_id": 7})["error"]
    assert error["code"] == Code.INVALID_ARGUMENT and "$.chain_id" in error["message"]
    assert bus.call("storage.remove_layer", {"chain_id": blob.diff_id})["result"] == {
        "chain_id": blob.diff_id, "removed": True}


def test_kill_9_mid_unpack_leaves_only_what_reconcile_removes(bus: Bus,
                                                              storage: Storage) -> None:
    assert bus.receive().command is Command.READY
    tar = LayerTar()
    for i in range(30000):
        tar.file(f"d{i % 100}/f{i}", b"x")
    blob = storage.blob(tar)
    bus.send("storage.unpack_layers", {"layers": [blob.args()]})

    def temp_dirs() -> list[str]:
        if not storage.layers_dir.is_dir():
            return []
        return [n for n in os.listdir(storage.layers_dir) if n.startswith(".tmp-")]

    def extracting() -> bool:
        return bool(temp_dirs()) and bool(os.listdir(storage.layers_dir / temp_dirs()[0] /
                                                     "diff"))

    poll_until(extracting, 20, interval=0.002, what="the unpack writing files")
    bus.proc.kill()
    bus.proc.wait(timeout=10)
    left = temp_dirs()
    assert len(left) == 1 and len(os.listdir(storage.layers_dir)) == 1  # never the layer

    # The dead worker's lock died with it: reconcile may take the temp dir.
    report = storage.call("reconcile", {"live_containers": []})
    assert report["removed_temp"] == left and report["busy"] == []
    assert storage.layer_entries() == []
    assert storage.unpack_one(blob.args())["unpacked"] is True
