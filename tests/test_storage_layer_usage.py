"""The writable layers' usage (workers/storage/layer_usage.py): measured in
the background under one lock per pool, answered from the cache.

Real rootfs mounts under tmp_path; the measurer runs as real threads, and
as the real storage worker process on a real bus (the test plays the
supervisor's ROUTER)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from daemonlib import poll_until
from layers import LayerTar, Storage, storage_in

from podvisor.proto import api_pb2 as api
from podvisor.proto import envelope
from podvisor.proto.envelope import Command
from podvisor.proto.errors import InvalidArgument
from podvisor.workers import locks
from podvisor.workers.storage.layer_usage import (
    LOCK_KEY,
    Measurer,
    MeasureSettings,
    rest_after,
)

MIB = 1024 * 1024
FAST = MeasureSettings(interval=0.1, budget=0.5)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    yield from storage_in(tmp_path)


@pytest.fixture
def measurers(storage: Storage) -> Iterator[Callable[..., Measurer]]:
    """Factory of measurer threads on the storage's layout, stopped at teardown."""
    made: list[Measurer] = []

    def make(settings: MeasureSettings = FAST, start: bool = True) -> Measurer:
        measurer = Measurer(storage.service.layout, settings, lock_retry=0.05)
        made.append(measurer)
        if start:
            measurer.start()
        return measurer

    yield make
    for measurer in made:
        measurer.stop(timeout=30)


def rootfs(storage: Storage, cid: str) -> dict[str, Any]:
    chain = storage.stack(LayerTar().file("etc/hostname", b"layer\n"))
    result: dict[str, Any] = storage.call("create_rootfs",
                                          {"container_id": cid, "layers": chain})
    return result


def usages(storage: Storage, *ids: str) -> dict[str, Any]:
    result: dict[str, Any] = storage.call("layer_usage", {"container_ids": list(ids)})
    return result


def layer(storage: Storage, cid: str) -> dict[str, int]:
    figure: dict[str, int] = usages(storage, cid)["layers"][cid]
    return figure


def entry(storage: Storage, cid: str) -> Path:
    return storage.runroot / "storage/usage" / f"{cid}.json"


def container_fs(storage: Storage) -> tuple[int, int]:
    info = api.ImageFsInfoResponse.FromString(storage.call("image_fs_info", {})["response"])
    fs, = info.container_filesystems
    return fs.used_bytes.value, fs.inodes_used.value


# ---- the budget and the settings --------------------------------------------


@pytest.mark.parametrize(("walk", "budget", "rest"), [
    (2.0, 0.2, 8.0), (0.3, 0.5, 0.3), (1.0, 1.0, 0.0), (0.01, 0.1, 0.09), (0.0, 0.2, 0.0)])
def test_the_rest_after_a_walk_keeps_to_the_budget(walk: float, budget: float,
                                                   rest: float) -> None:
    assert rest_after(walk, budget) == pytest.approx(rest)
    if walk:
        assert walk / (walk + rest_after(walk, budget)) == pytest.approx(budget)


def test_settings_are_read_from_the_stats_section() -> None:
    settings = {"stats": {"layer_usage_interval": 12.5, "layer_usage_budget": 0.25}}
    assert MeasureSettings.from_settings(settings) == MeasureSettings(interval=12.5,
                                                                      budget=0.25)
    with pytest.raises(KeyError):
        MeasureSettings.from_settings({"stats": {"layer_usage_interval": 10.0}})
    for interval, budget in ((0.0, 0.2), (10.0, 0.0), (10.0, 1.5)):
        with pytest.raises(ValueError, match="layer_usage_"):
            MeasureSettings(interval=interval, budget=budget)


# ---- the cache and the op ---------------------------------------------------


def test_a_created_rootfs_has_a_figure_at_once(storage: Storage) -> None:
    before = time.time_ns()
    created = rootfs(storage, "fresh")
    upper = os.lstat(created["upper_dir"])
    figure = layer(storage, "fresh")
    assert figure["used_bytes"] == upper.st_blocks * 512
    assert figure["inodes_used"] == 1
    assert before <= figure["timestamp_ns"] <= time.time_ns()
    storage.call("remove_rootfs", {"container_id": "fresh"})


def test_the_op_answers_from_the_cache_without_walking(storage: Storage) -> None:
    created = rootfs(storage, "cached")
    Path(created["path"], "big").write_bytes(os.urandom(2 * MIB))
    # What the op answers is the entry, whatever the upper dir holds now.
    entry(storage, "cached").write_text(json.dumps(
        {"used_bytes": 123456789, "inodes_used": 42, "timestamp_ns": 7}))
    assert layer(storage, "cached") == {"used_bytes": 123456789, "inodes_used": 42,
                                        "timestamp_ns": 7}
    storage.call("remove_rootfs", {"container_id": "cached"})


def test_unknown_ids_are_left_out_and_unmeasured_ones_answer_zeros(storage: Storage) -> None:
    rootfs(storage, "known")
    entry(storage, "known").unlink()  # as after a reboot: the runroot is volatile
    answer = usages(storage, "known", "never-created")
    assert answer["layers"] == {"known": {"used_bytes": 0, "inodes_used": 0,
                                          "timestamp_ns": 0}}
    entry(storage, "known").write_text("{torn")  # unreadable counts as none
    assert layer(storage, "known")["timestamp_ns"] == 0
    with pytest.raises(InvalidArgument, match="container_id"):
        usages(storage, "../escape")
    storage.call("remove_rootfs", {"container_id": "known"})
    assert usages(storage, "known")["layers"] == {}


def test_the_filesystem_is_the_containers_dir(storage: Storage) -> None:
    fs = usages(storage)["filesystem"]
    containers = storage.root / "storage/containers"
    assert fs["mountpoint"] == str(containers) and containers.is_dir()
    st = os.statvfs(containers)
    assert fs["capacity_bytes"] == st.f_blocks * st.f_frsize > 0
    assert 0 <= fs["available_bytes"] <= fs["capacity_bytes"]
    assert fs["inodes_total"] == st.f_files
    assert 0 <= fs["inodes_free"] <= fs["inodes_total"]


def test_a_removed_rootfs_takes_its_entry_along(storage: Storage) -> None:
    rootfs(storage, "gone")
    assert entry(storage, "gone").is_file()
    assert storage.call("remove_rootfs", {"container_id": "gone"})["removed"] is True
    assert not entry(storage, "gone").exists()
    assert os.listdir(storage.runroot / "storage/usage") == []


def test_reconcile_drops_the_entries_of_gone_containers(storage: Storage) -> None:
    rootfs(storage, "live")
    rootfs(storage, "dead")
    usage_dir = storage.runroot / "storage/usage"
    # What a crash leaves: an entry whose rootfs went, a temp of a write.
    (usage_dir / "ghost.json").write_text(json.dumps(
        {"used_bytes": 1, "inodes_used": 1, "timestamp_ns": 1}))
    (usage_dir / ".tmp-live-0badf00d").write_text("{")
    storage.call("reconcile", {"live_containers": ["live"]})
    assert os.listdir(usage_dir) == ["live.json"]
    assert sorted(os.listdir(storage.runroot / "storage/locks")) == []
    storage.call("remove_rootfs", {"container_id": "live"})


def test_image_fs_info_counts_the_cached_upper_dirs(storage: Storage) -> None:
    created = rootfs(storage, "fsinfo")
    base = {"used_bytes": 4096, "inodes_used": 1, "timestamp_ns": 1}
    entry(storage, "fsinfo").write_text(json.dumps(base))
    before = container_fs(storage)
    # Written but not measured yet: not walked on the call.
    Path(created["path"], "unmeasured").write_bytes(os.urandom(MIB))
    assert container_fs(storage) == before
    entry(storage, "fsinfo").write_text(json.dumps(
        {**base, "used_bytes": 4096 + 5 * MIB, "inodes_used": 3}))
    assert container_fs(storage) == (before[0] + 5 * MIB, before[1] + 2)
    storage.call("remove_rootfs", {"container_id": "fsinfo"})


# ---- the measurer -----------------------------------------------------------


def test_a_written_file_shows_after_the_next_pass(storage: Storage,
                                                  measurers: Callable[..., Measurer]) -> None:
    created = rootfs(storage, "writer")
    measurers()
    big = Path(created["path"], "big")
    big.write_bytes(os.urandom(10 * MIB))
    grown = poll_until(lambda: (f := layer(storage, "writer"))["used_bytes"] >= 10 * MIB and f,
                       30, what="the 10 MiB file in the layer's figure")
    assert grown["inodes_used"] == 2
    big.unlink()
    shrunk = poll_until(lambda: (f := layer(storage, "writer"))["used_bytes"] < MIB and f,
                        30, what="the layer's figure after the file's removal")
    assert shrunk["inodes_used"] == 1 and shrunk["timestamp_ns"] > grown["timestamp_ns"]
    storage.call("remove_rootfs", {"container_id": "writer"})


def test_only_the_lock_holder_measures(storage: Storage,
                                       measurers: Callable[..., Measurer]) -> None:
    rootfs(storage, "shared")
    first = measurers()
    poll_until(lambda: first.measuring, 30, what="the first measurer taking the lock")
    second = measurers()
    poll_until(lambda: first.walks >= 3, 30, what="three walks by the holder")
    assert second.walks == 0 and not second.measuring
    # The holder goes: its flock goes with it, and the other takes over.
    first.stop(timeout=30)
    poll_until(lambda: second.walks >= 1, 30, what="the second measurer taking over")
    assert second.measuring
    storage.call("remove_rootfs", {"container_id": "shared"})


def test_a_fresh_figure_is_not_walked_again(storage: Storage,
                                            measurers: Callable[..., Measurer]) -> None:
    rootfs(storage, "due")
    measurer = measurers(MeasureSettings(interval=3600.0, budget=1.0), start=False)
    measurer.pass_once()
    assert measurer.walks == 0  # create_rootfs's figure is fresh
    for stale in (1, time.time_ns() + 3600 * 10**9):  # old; from a clock stepped back
        entry(storage, "due").write_text(json.dumps(
            {"used_bytes": 0, "inodes_used": 0, "timestamp_ns": stale}))
        walks = measurer.walks
        measurer.pass_once()
        assert measurer.walks == walks + 1 and layer(storage, "due")["inodes_used"] == 1
    storage.call("remove_rootfs", {"container_id": "due"})


def test_a_measure_writes_only_under_the_containers_lock(
        storage: Storage, measurers: Callable[..., Measurer]) -> None:
    created = rootfs(storage, "locked")
    first = layer(storage, "locked")
    Path(created["path"], "f").write_bytes(os.urandom(64 * 1024))
    measurer = measurers(start=False)
    lock_file = locks.lock_path(str(storage.runroot / "storage/locks"), "container-locked")
    held = locks.try_acquire(str(storage.runroot / "storage/locks"), "container-locked")
    assert held is not None
    try:
        assert measurer.measure("locked") is False  # a create or remove is at work
    finally:
        held.release()
    assert layer(storage, "locked") == first
    assert measurer.measure("locked") is True
    assert layer(storage, "locked")["used_bytes"] >= 64 * 1024
    storage.call("remove_rootfs", {"container_id": "locked"})
    # A rootfs removed since the listing gets no entry back, nor a lock file.
    assert measurer.measure("locked") is False
    assert not entry(storage, "locked").exists()
    assert not Path(lock_file).exists()


# ---- the real worker --------------------------------------------------------


class Worker:
    """One storage worker process and the supervisor's end of its bus."""

    def __init__(self, storage: Storage, settings: dict[str, Any]) -> None:
        path = storage.base / "worker-settings.json"
        path.write_text(json.dumps(settings))
        endpoint = f"ipc://{storage.base}/storage.sock"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.peer = b""
        self.log = storage.base / "worker.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "podvisor.workers.storage", "--index", "1",
                 "--endpoint", endpoint, "--settings", str(path),
                 "--parent-pid", str(os.getpid())],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def receive(self, timeout: float = 20.0) -> envelope.Message:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"the worker went quiet: {self.log.read_text()}"
            if not self.sock.poll(int(left * 1000)):
                continue
            self.peer, *frames = self.sock.recv_multipart()
            message = envelope.decode(frames)
            if message.command is not Command.HEARTBEAT:
                return message

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        frames = envelope.request(op, args, deadline=time.monotonic() + 30)
        self.sock.send_multipart([self.peer, *frames])
        reply = self.receive()
        assert reply.command is Command.REPLY
        result: dict[str, Any] = reply.payload["result"]
        return result

    def close(self) -> None:
        killed = self.proc.poll() == -signal.SIGKILL
        self.proc.terminate()
        status = self.proc.wait(timeout=20)
        self.sock.close()
        self.ctx.term()
        assert killed or status == 0, self.log.read_text()


@pytest.fixture
def worker(storage: Storage) -> Iterator[Worker]:
    settings = {**storage.settings, "python_log_level": "DEBUG", "log_format": "text",
                "bus_max_payload": envelope.MAX_PAYLOAD,
                "workers": {"max_inflight": 4, "heartbeat_interval": 5.0,
                            "heartbeat_liveness": 6, "stop_timeout": 5.0},
                "stats": {"layer_usage_interval": 0.2, "layer_usage_budget": 0.5}}
    worker = Worker(storage, settings)
    try:
        yield worker
    finally:
        worker.close()


def test_the_worker_measures_and_a_survivor_takes_over_when_it_is_killed(
        worker: Worker, storage: Storage, measurers: Callable[..., Measurer]) -> None:
    ready = worker.receive()
    assert ready.command is Command.READY and "storage.layer_usage" in ready.payload["ops"]
    created = rootfs(storage, "bus-1")
    Path(created["path"], "big").write_bytes(os.urandom(10 * MIB))

    def measured() -> int:
        used: int = worker.call("storage.layer_usage",
                                {"container_ids": ["bus-1"]})["layers"]["bus-1"]["used_bytes"]
        return used >= 10 * MIB and used

    poll_until(measured, 30, what="the worker's measurer finding the 10 MiB file")
    # The worker holds the measurer lock: a survivor waits for it...
    survivor = measurers()
    probe = locks.try_acquire(str(storage.runroot / "storage/locks"), LOCK_KEY)
    if probe is not None:
        probe.release()
    assert probe is None and not survivor.measuring
    # ...and gets it once the holder is killed.
    worker.proc.kill()
    worker.proc.wait(timeout=10)
    poll_until(lambda: survivor.measuring, 30, what="the survivor taking the lock")
    storage.call("remove_rootfs", {"container_id": "bus-1"})
