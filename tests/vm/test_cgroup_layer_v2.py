"""The cgroup layer on a pure cgroup v2 host: runs in the VM (../shared/vm),
skipped elsewhere.

Each test works in a tree ``/podvisor-test-<hex>`` whose controllers are
enabled in its own and the root's cgroup.subtree_control; processes sit
only in leaves, since a v2 cgroup with processes cannot hand controllers to
children. A Python child of ours joins a leaf before it does anything
measured, so its CPU, memory and I/O are charged there. The finalizer
kills our children and removes the tree, leaves first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from podvisor.proto.errors import FailedPrecondition, InvalidArgument
from podvisor.workers.runtime.cgroup import hierarchy, limits, usage
from podvisor.workers.runtime.cgroup.hierarchy import Hierarchy
from podvisor.workers.runtime.cgroup.limits import Limits

MiB = 1 << 20
WANTED = ("cpu", "cpuset", "io", "memory", "pids")


def _v2() -> Hierarchy | None:
    try:
        found = hierarchy.host()
    except (OSError, hierarchy.NoCgroups):
        return None
    return found if found.is_v2 else None


H = _v2()
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or H is None,
                                reason="needs root on a pure cgroup v2 host (runs in the VM)")

# Waits for "go" (sent once it is in its leaf), burns 0.3 s of CPU, touches
# 32 MiB, writes 1 MiB with O_DIRECT where /var/tmp is on a block device,
# says "ready io|noio" and waits again.
WORKER = r"""
import mmap, os, sys, time
sys.stdin.readline()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
block = bytearray(32 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
io = "noio"
name = "/var/tmp/podvisor-io-%d" % os.getpid()
try:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    try:
        buf = mmap.mmap(-1, 1 << 20)
        buf.write(b"x" * (1 << 20))
        os.write(fd, buf)
        if os.major(os.fstat(fd).st_dev) != 0:
            io = "io"
    finally:
        os.close(fd)
        os.unlink(name)
except OSError:
    pass
print("ready", io, flush=True)
sys.stdin.readline()
"""

# Waits for "go", then allocates and touches 64 MiB: beyond an 8 MiB limit.
HOG = r"""
import sys
sys.stdin.readline()
block = bytearray(64 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
print("survived", flush=True)
"""


@dataclass
class Tree:
    h: Hierarchy
    top: str
    made: list[str] = field(default_factory=list)
    children: list[subprocess.Popen[str]] = field(default_factory=list)

    def dir(self, path: str) -> Path:
        return Path(hierarchy.join(self.h.root, path))

    def make(self, name: str, enable: tuple[str, ...] = ()) -> str:
        path = f"{self.top}/{name}" if name else self.top
        os.mkdir(self.dir(path))
        self.made.append(path)
        if enable:
            (self.dir(path) / "cgroup.subtree_control").write_text(
                " ".join(f"+{c}" for c in enable))
        return path

    def spawn(self, path: str, script: str) -> subprocess.Popen[str]:
        """A child of ours in ``path``, told to go once it is there."""
        child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        self.children.append(child)
        (self.dir(path) / "cgroup.procs").write_text(str(child.pid))
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        return child

    def file(self, path: str, name: str) -> str:
        return (self.dir(path) / name).read_text().strip()


@pytest.fixture
def tree() -> Iterator[Tree]:
    assert H is not None
    enable = tuple(c for c in WANTED if c in H.controllers)
    root = Path(H.root, "cgroup.subtree_control")
    root.write_text(" ".join(f"+{c}" for c in enable))
    made = Tree(H, f"/podvisor-test-{uuid.uuid4().hex[:12]}")
    try:
        made.make("", enable)
        yield made
    finally:
        for child in made.children:
            child.kill()
            child.wait()
        for path in reversed(made.made):
            _rmdir(made.dir(path))


def _rmdir(directory: Path, timeout: float = 30.0) -> None:
    # A killed child leaves its cgroup a moment after wait() returns.
    deadline = time.monotonic() + timeout
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_read_sees_cpu_memory_and_io_of_a_process_inside(tree: Tree) -> None:
    leaf = tree.make("work")
    child = tree.spawn(leaf, WORKER)
    assert child.stdout is not None
    ready, io = child.stdout.readline().split()
    assert ready == "ready"
    got = usage.read(tree.h, leaf)
    assert got.cpu_usage_ns >= 200_000_000
    assert got.memory_usage_bytes >= 32 * MiB
    assert got.memory_rss_bytes >= 32 * MiB
    assert 32 * MiB <= got.memory_working_set_bytes <= got.memory_usage_bytes
    assert got.page_faults > 0  # fewer than 32 MiB / 4 KiB where THP serves the block
    assert got.memory_limit_bytes is None
    assert got.oom_kills == 0
    assert got.pids_current == 1
    assert got.swap_usage_bytes is None or got.swap_usage_bytes >= 0
    if io == "io" and "io" in tree.h.controllers:
        assert got.io_write_bytes >= MiB
    # The parent's figures include its child's (v2 is hierarchical).
    parent = usage.read(tree.h, tree.top)
    assert parent.cpu_usage_ns >= got.cpu_usage_ns
    assert parent.memory_usage_bytes >= 32 * MiB


def test_oom_kill_beyond_memory_max_is_counted(tree: Tree) -> None:
    leaf = tree.make("oom")
    # memory+swap equal to memory: no swap, so the hog cannot escape to it.
    limits.write(tree.h, leaf, Limits(memory_bytes=8 * MiB, memory_swap_bytes=8 * MiB))
    assert tree.file(leaf, "memory.max") == str(8 * MiB)
    assert usage.read(tree.h, leaf).memory_limit_bytes == 8 * MiB
    hog = tree.spawn(leaf, HOG)
    assert hog.wait(timeout=120) == -9
    assert usage.oom_kills(tree.h, leaf) >= 1
    assert usage.read(tree.h, leaf).oom_kills >= 1
    assert usage.oom_kills(tree.h, tree.top) >= 1  # memory.events counts up the tree


def test_write_limits_and_read_them_back(tree: Tree) -> None:
    h, leaf = tree.h, tree.make("limits")
    swap = (tree.dir(leaf) / "memory.swap.max").exists()
    limits.write(h, leaf, Limits(
        memory_bytes=256 * MiB, memory_swap_bytes=(512 if swap else 256) * MiB,
        cpu_shares=512, cpu_quota_us=50_000, cpu_period_us=100_000,
        cpuset_cpus="0", cpuset_mems="0", pids_max=64,
        unified={"memory.high": str(200 * MiB)}))
    assert tree.file(leaf, "memory.max") == str(256 * MiB)
    if swap:
        assert tree.file(leaf, "memory.swap.max") == str(256 * MiB)
    assert tree.file(leaf, "cpu.weight") == str(limits.cpu_weight(512)) == "59"
    assert tree.file(leaf, "cpu.max") == "50000 100000"
    assert tree.file(leaf, "cpuset.cpus") == "0"
    assert tree.file(leaf, "cpuset.mems") == "0"
    assert tree.file(leaf, "pids.max") == "64"
    assert tree.file(leaf, "memory.high") == str(200 * MiB)
    assert usage.read(h, leaf).memory_limit_bytes == 256 * MiB

    limits.write(h, leaf, Limits(cpu_period_us=200_000))  # the quota stays
    assert tree.file(leaf, "cpu.max") == "50000 200000"
    limits.write(h, leaf, Limits(memory_bytes=-1, cpu_quota_us=-1, pids_max=-1))
    assert tree.file(leaf, "memory.max") == "max"
    if swap:
        assert tree.file(leaf, "memory.swap.max") == "max"
    assert tree.file(leaf, "cpu.max") == "max 200000"
    assert tree.file(leaf, "pids.max") == "max"
    assert usage.read(h, leaf).memory_limit_bytes is None


def test_refusals(tree: Tree) -> None:
    h, leaf = tree.h, tree.make("refused")
    for key in ("cgroup.procs", "cgroup.subtree_control", "cgroup.kill", "cgroup.freeze"):
        with pytest.raises(InvalidArgument, match=rf"{key} is a cgroup interface file"):
            limits.write(h, leaf, Limits(unified={key: "1"}))
    with pytest.raises(InvalidArgument, match=r"is not a file name"):
        limits.write(h, leaf, Limits(unified={"../cgroup.procs": "0"}))
    with pytest.raises(InvalidArgument, match=r"not a file of the cgroup"):
        limits.write(h, leaf, Limits(unified={"nosuch.file": "1"}))
    with pytest.raises(InvalidArgument, match=r"memory\.high.*lots"):
        limits.write(h, leaf, Limits(unified={"memory.high": "lots"}))
    with pytest.raises(InvalidArgument, match=r"cpuset\.cpus.*abc"):
        limits.write(h, leaf, Limits(cpuset_cpus="abc"))
    with pytest.raises(InvalidArgument, match=r"cpu\.max.*10"):
        limits.write(h, leaf, Limits(cpu_quota_us=10))  # below the kernel's 1 ms
    limits.write(h, leaf, Limits(unified={"cgroup.max.depth": "2"}))
    assert tree.file(leaf, "cgroup.max.depth") == "2"

    # A child of a cgroup that enables nothing for it: no controller files.
    bare = tree.make("refused/bare")
    with pytest.raises(FailedPrecondition, match=r"pids controller is not enabled"):
        limits.write(h, bare, Limits(pids_max=5))
    with pytest.raises(FailedPrecondition, match=r"memory controller, which this cgroup"):
        limits.write(h, bare, Limits(unified={"memory.high": "1"}))
    got = usage.read(h, bare)
    assert (got.memory_usage_bytes, got.cpu_usage_ns, got.oom_kills) == (0, 0, 0)
    assert got.memory_limit_bytes is None and got.pids_current is None


def test_a_gone_cgroup_raises_file_not_found() -> None:
    assert H is not None
    gone = f"/podvisor-test-gone-{uuid.uuid4().hex[:12]}"
    with pytest.raises(FileNotFoundError):
        usage.read(H, gone)
    with pytest.raises(FileNotFoundError):
        limits.write(H, gone, Limits(memory_bytes=64 * MiB))
