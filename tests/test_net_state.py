"""The net pool's building blocks: pod locks, records, namespaces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from netfixtures import in_netns

from podvisor.proto.errors import DeadlineExceeded
from podvisor.workers import locks
from podvisor.workers.net import netns, store
from podvisor.workers.records import RecordCorrupt, RecordDir

HOLDER = """\
import sys, time
from podvisor.workers import locks
lock = locks.acquire(sys.argv[1], "pod-a", time.monotonic() + 10)
print("locked", flush=True)
sys.stdin.read()
"""


def soon(seconds: float = 0.05) -> float:
    return time.monotonic() + seconds


def test_a_held_pod_lock_blocks_that_pod_only(tmp_path: Path) -> None:
    held = locks.acquire(str(tmp_path), "pod-a", soon(5))
    with pytest.raises(DeadlineExceeded, match="pod-a"):
        locks.acquire(str(tmp_path), "pod-a", soon())
    other = locks.acquire(str(tmp_path), "pod-b", soon())
    other.release()
    held.release()
    locks.acquire(str(tmp_path), "pod-a", soon()).release()


def test_a_pod_lock_dies_with_its_holder(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        with pytest.raises(DeadlineExceeded):
            locks.acquire(str(tmp_path), "pod-a", soon())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        locks.acquire(str(tmp_path), "pod-a", soon()).release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_child_given_the_lock_fd_keeps_the_pod_locked(tmp_path: Path) -> None:
    """What keeps a pod locked while a plugin orphaned by a worker kill runs."""
    lock = locks.acquire(str(tmp_path), "pod-a", soon())
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, pass_fds=(lock.fd,))
    try:
        lock.release()
        with pytest.raises(DeadlineExceeded):
            locks.acquire(str(tmp_path), "pod-a", soon())
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    locks.acquire(str(tmp_path), "pod-a", soon()).release()


def test_a_waiter_follows_an_unlinked_lock_file(tmp_path: Path) -> None:
    first = locks.acquire(str(tmp_path), "pod-a", soon())
    got: list[locks.ObjectLock] = []
    waiter = threading.Thread(target=lambda: got.append(
        locks.acquire(str(tmp_path), "pod-a", soon(10))))
    waiter.start()
    first.release(unlink=True)
    waiter.join(10)
    held = got[0]
    path = tmp_path / "pod-a.lock"
    assert os.fstat(held.fd).st_ino == path.stat().st_ino
    held.release(unlink=True)
    assert os.listdir(tmp_path) == []


def test_records_are_replaced_whole_and_corruption_is_named(tmp_path: Path) -> None:
    d = str(tmp_path / "pods")
    records = RecordDir(d)
    assert records.load("p1") is None
    records.save("p1", {"state": store.SETTING_UP})
    records.save("p1", {"state": store.READY, "result": {"ips": []}})
    assert records.load("p1") == {"state": store.READY, "result": {"ips": []}}
    assert records.ids() == ["p1"]
    assert [n for n in os.listdir(d) if n.endswith(".tmp")] == []

    Path(d, "p2.json").write_text("{torn")
    with pytest.raises(RecordCorrupt, match=r"p2\.json"):
        records.load("p2")
    Path(d, ".p3.abc.tmp").write_text("{")
    assert records.remove_stale_temps() == []  # too young: maybe a save in flight
    assert records.remove_stale_temps(older_than=-1) == [".p3.abc.tmp"]
    # A killed save's temp file goes with its pod's record, no other's.
    Path(d, ".p1.k1ll3d_x.tmp").write_text("{")
    Path(d, ".p1.x.k1ll3d_x.tmp").write_text("{")
    records.delete("p1")
    records.delete("p1")
    assert records.ids() == ["p2"]
    assert sorted(n for n in os.listdir(d) if n.endswith(".tmp")) == [".p1.x.k1ll3d_x.tmp"]


def test_namespaces_are_pinned_with_lo_up_and_removed_idempotently(tmp_path: Path) -> None:
    path = str(tmp_path / "netns" / "pod-a")
    netns.create(path)
    try:
        assert netns.exists(path)
        own = os.stat("/proc/self/ns/net").st_ino
        assert os.stat(path).st_ino != own
        inode = in_netns(path, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        assert inode == os.stat(path).st_ino
        with pytest.raises(FileExistsError):
            netns.create(path)
        assert netns.exists(path)  # the failed create left the first one alone
    finally:
        netns.remove(path)
    assert not os.path.lexists(path)
    netns.remove(path)

    # A leftover of a creation that died before its mount.
    Path(path).touch()
    assert not netns.exists(path)
    netns.remove(path)
    assert netns.list_names(str(tmp_path / "netns")) == []
