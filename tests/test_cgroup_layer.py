"""The cgroup layer's usage and limits, on this host's real cgroups and on
fake roots.

Real: a cgroup ``/podvisor-test-<hex>`` is made in every hierarchy of the
host, a Python child of ours joins it and burns CPU and memory, and
``usage.read`` must see it; limits are written and read back from the
kernel's files. Fake: directories under tmp_path laid out as a v1 or v2
mount (``hierarchy.parse`` of a made-up mountinfo), for the parsing and
the checks made before any write. The pure v2 counterpart of the real part
runs in the VM (tests/vm/test_cgroup_layer_v2.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podvisor.proto.errors import FailedPrecondition, InvalidArgument
from podvisor.workers.runtime.cgroup import hierarchy, limits, usage
from podvisor.workers.runtime.cgroup.hierarchy import Hierarchy
from podvisor.workers.runtime.cgroup.limits import Limits

MiB = 1 << 20

# Waits for a line on stdin (sent once it is in the cgroup, so what it
# does next is charged there), burns 0.3 s of CPU, touches 32 MiB, says
# "ready" and waits again.
CHILD = r"""
import sys, time
sys.stdin.readline()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
block = bytearray(32 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
print("ready", flush=True)
sys.stdin.readline()
"""


def _host() -> Hierarchy | None:
    try:
        return hierarchy.host()
    except (OSError, hierarchy.NoCgroups):
        return None


HOST = _host()
real = pytest.mark.skipif(
    os.geteuid() != 0 or HOST is None or HOST.is_v2 or "memory" not in HOST.controllers,
    reason="needs root on a cgroup v1/hybrid host with the memory controller "
           "(v2 runs in the VM)")


@dataclass
class Cgroup:
    h: Hierarchy
    path: str
    dirs: list[str]
    child: subprocess.Popen[str] | None = None

    def file(self, controller: str, name: str) -> str:
        directory = self.h.dir(controller, self.path)
        assert directory is not None
        return Path(directory, name).read_text().strip()

    def run_child(self) -> None:
        """Start the child, move it in, let it burn and allocate."""
        self.child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        for directory in self.dirs:
            Path(directory, "cgroup.procs").write_text(str(self.child.pid))
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write("go\n")
        self.child.stdin.flush()
        assert self.child.stdout.readline().strip() == "ready"


@pytest.fixture
def cgroup() -> Iterator[Cgroup]:
    assert HOST is not None
    path = f"/podvisor-test-{uuid.uuid4().hex[:12]}"
    group = Cgroup(HOST, path, [])
    try:
        for directory in HOST.dirs(path):
            os.mkdir(directory)
            group.dirs.append(directory)
            if directory == HOST.dir("cpuset", path):
                # A v1 cpuset starts empty and takes no process until given
                # its parent's CPUs and memory nodes.
                parent = os.path.dirname(directory)
                for name in ("cpuset.mems", "cpuset.cpus"):
                    Path(directory, name).write_text(Path(parent, name).read_text())
        yield group
    finally:
        if group.child is not None:
            group.child.kill()
            group.child.wait()
        for directory in reversed(group.dirs):
            _rmdir(directory)


def _rmdir(directory: str, timeout: float = 10.0) -> None:
    # A killed child leaves its cgroup a moment after wait() returns.
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- real cgroups ------------------------------------------------------------

@real
def test_read_sees_the_cpu_and_memory_of_a_process_inside(cgroup: Cgroup) -> None:
    before = time.time_ns()
    cgroup.run_child()
    got = usage.read(cgroup.h, cgroup.path)
    assert before <= got.timestamp_ns <= time.time_ns()
    assert got.cpu_usage_ns >= 200_000_000
    assert got.memory_usage_bytes >= 32 * MiB
    assert got.memory_rss_bytes >= 32 * MiB
    assert 32 * MiB <= got.memory_working_set_bytes <= got.memory_usage_bytes
    assert got.page_faults > 0  # fewer than 32 MiB / 4 KiB where THP serves the block
    assert got.major_page_faults >= 0
    assert got.memory_limit_bytes is None
    assert got.oom_kills == 0 == usage.oom_kills(cgroup.h, cgroup.path)
    if "pids" in cgroup.h.controllers:
        assert got.pids_current == 1
    if Path(cgroup.h.dir("memory", "/") or "", "memory.memsw.usage_in_bytes").exists():
        assert got.swap_usage_bytes is not None and got.swap_usage_bytes >= 0
    assert got.io_read_bytes >= 0 and got.io_write_bytes >= 0


@real
def test_read_of_a_gone_cgroup_raises_file_not_found() -> None:
    assert HOST is not None
    with pytest.raises(FileNotFoundError):
        usage.read(HOST, f"/podvisor-test-gone-{uuid.uuid4().hex[:12]}")
    with pytest.raises(FileNotFoundError):
        usage.oom_kills(HOST, f"/podvisor-test-gone-{uuid.uuid4().hex[:12]}")


@real
def test_write_limits_and_read_them_back(cgroup: Cgroup) -> None:
    h, path = cgroup.h, cgroup.path
    limits.write(h, path, Limits(memory_bytes=256 * MiB, memory_swap_bytes=512 * MiB,
                                 cpu_shares=512, cpu_quota_us=50_000, cpu_period_us=100_000,
                                 cpuset_cpus="0", cpuset_mems="0", pids_max=64))
    assert cgroup.file("memory", "memory.limit_in_bytes") == str(256 * MiB)
    assert cgroup.file("memory", "memory.memsw.limit_in_bytes") == str(512 * MiB)
    assert cgroup.file("cpu", "cpu.shares") == "512"
    assert cgroup.file("cpu", "cpu.cfs_quota_us") == "50000"
    assert cgroup.file("cpu", "cpu.cfs_period_us") == "100000"
    assert cgroup.file("cpuset", "cpuset.cpus") == "0"
    assert cgroup.file("cpuset", "cpuset.mems") == "0"
    assert cgroup.file("pids", "pids.max") == "64"
    assert usage.read(h, path).memory_limit_bytes == 256 * MiB

    # Lowering both needs memory first, raising both memsw first: the
    # kernel keeps memsw >= memory at every write.
    limits.write(h, path, Limits(memory_bytes=128 * MiB, memory_swap_bytes=128 * MiB))
    assert cgroup.file("memory", "memory.memsw.limit_in_bytes") == str(128 * MiB)
    limits.write(h, path, Limits(memory_bytes=1024 * MiB, memory_swap_bytes=2048 * MiB))
    assert cgroup.file("memory", "memory.limit_in_bytes") == str(1024 * MiB)
    assert cgroup.file("memory", "memory.memsw.limit_in_bytes") == str(2048 * MiB)

    # A shorter period with a new quota; then the period alone.
    limits.write(h, path, Limits(cpu_quota_us=10_000, cpu_period_us=20_000))
    assert cgroup.file("cpu", "cpu.cfs_quota_us") == "10000"
    assert cgroup.file("cpu", "cpu.cfs_period_us") == "20000"
    limits.write(h, path, Limits(cpu_period_us=200_000))
    assert cgroup.file("cpu", "cpu.cfs_quota_us") == "10000"
    assert cgroup.file("cpu", "cpu.cfs_period_us") == "200000"

    # -1 lifts a limit; lifting memory lifts memory+swap with it.
    limits.write(h, path, Limits(memory_bytes=-1, cpu_quota_us=-1, pids_max=-1))
    assert usage.read(h, path).memory_limit_bytes is None
    assert int(cgroup.file("memory", "memory.memsw.limit_in_bytes")) >= usage.V1_UNLIMITED
    assert cgroup.file("cpu", "cpu.cfs_quota_us") == "-1"
    assert cgroup.file("pids", "pids.max") == "max"


@real
def test_unified_is_refused_on_v1_naming_the_key(cgroup: Cgroup) -> None:
    with pytest.raises(InvalidArgument, match=r"memory.high.*needs cgroup v2"):
        limits.write(cgroup.h, cgroup.path, Limits(unified={"memory.high": "1000000"}))
    with pytest.raises(InvalidArgument) as refused:
        limits.write(cgroup.h, cgroup.path, Limits(unified={"k" * 5000: "1"}))
    assert len(refused.value.message) < 300


@real
def test_values_the_kernel_refuses_are_invalid_argument(cgroup: Cgroup) -> None:
    h, path = cgroup.h, cgroup.path
    with pytest.raises(InvalidArgument, match=r"cpuset.cpus.*abc"):
        limits.write(h, path, Limits(cpuset_cpus="abc"))
    with pytest.raises(InvalidArgument, match=r"cpu.cfs_quota_us.*10"):
        limits.write(h, path, Limits(cpu_quota_us=10))  # below the kernel's 1 ms
    with pytest.raises(InvalidArgument, match=r"cpu.cfs_period_us"):
        limits.write(h, path, Limits(cpu_period_us=10))


@real
def test_values_refused_before_any_write_change_nothing(cgroup: Cgroup) -> None:
    h, path = cgroup.h, cgroup.path
    before = cgroup.file("memory", "memory.limit_in_bytes")
    for bad in (Limits(memory_bytes=64 * MiB, cpu_shares=-3),
                Limits(memory_bytes=64 * MiB, memory_swap_bytes=32 * MiB),
                Limits(memory_swap_bytes=64 * MiB),
                Limits(memory_bytes=-5),
                Limits(memory_bytes=64 * MiB, unified={"memory.high": "1"})):
        with pytest.raises(InvalidArgument):
            limits.write(h, path, bad)
        assert cgroup.file("memory", "memory.limit_in_bytes") == before


@real
def test_a_memory_limit_below_unreclaimable_usage_is_failed_precondition(
        cgroup: Cgroup) -> None:
    if Path("/proc/swaps").read_text().count("\n") > 1:
        pytest.skip("with swap the kernel can reclaim the child's memory")
    cgroup.run_child()
    # v1 refuses (EBUSY) a limit it cannot reclaim down to, rather than
    # killing: anonymous memory without swap stays.
    with pytest.raises(FailedPrecondition, match=r"memory.limit_in_bytes"):
        limits.write(cgroup.h, cgroup.path, Limits(memory_bytes=4 * MiB))
    assert usage.read(cgroup.h, cgroup.path).memory_limit_bytes is None


@real
def test_write_to_a_gone_cgroup_raises_file_not_found() -> None:
    assert HOST is not None
    with pytest.raises(FileNotFoundError):
        limits.write(HOST, f"/podvisor-test-gone-{uuid.uuid4().hex[:12]}",
                     Limits(memory_bytes=64 * MiB))


# -- fake roots --------------------------------------------------------------

def fake_v2(root: Path, controllers: str = "cpuset cpu io memory pids") -> Hierarchy:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    return hierarchy.parse(f"30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw\n",
                           root=str(root))


def fake_v1(root: Path, controllers: tuple[str, ...] = ("cpu", "cpuacct", "memory", "blkio",
                                                        "pids", "cpuset")) -> Hierarchy:
    lines = [f"{30 + i} 23 0:{40 + i} / {root}/{name} rw - cgroup cgroup rw,{name}"
             for i, name in enumerate(controllers)]
    for name in controllers:
        (root / name).mkdir(parents=True, exist_ok=True)
    return hierarchy.parse("\n".join(lines) + "\n", root=str(root))


def files(directory: Path, **contents: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (directory / name.replace("__", ".")).write_text(text)


V2_STAT = "anon 1000\nfile 500\ninactive_file 300\npgfault 77\npgmajfault 3\n"


def test_v2_figures_from_their_files(tmp_path: Path) -> None:
    h = fake_v2(tmp_path)
    files(tmp_path / "pod", cpu__stat="usage_usec 1500\nuser_usec 1000\n",
          memory__current="2000\n", memory__stat=V2_STAT, memory__max="max\n",
          memory__events="low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n",
          memory__swap__current="10\n", pids__current="3\n",
          io__stat="8:0 rbytes=100 wbytes=200 rios=1 wios=2\n"
                   "8:16 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n")
    got = usage.read(h, "/pod")
    assert (got.cpu_usage_ns, got.memory_usage_bytes, got.memory_working_set_bytes) == \
        (1_500_000, 2000, 1700)
    assert (got.memory_rss_bytes, got.page_faults, got.major_page_faults) == (1000, 77, 3)
    assert (got.memory_limit_bytes, got.oom_kills, got.swap_usage_bytes) == (None, 2, 10)
    assert (got.pids_current, got.io_read_bytes, got.io_write_bytes) == (3, 101, 202)
    assert usage.oom_kills(h, "/pod") == 2


def test_v2_working_set_is_floored_and_absent_files_are_zero_or_none(tmp_path: Path) -> None:
    h = fake_v2(tmp_path)
    files(tmp_path / "pod", memory__current="100\n", memory__stat="inactive_file 400\n",
          memory__max="65536\n")
    got = usage.read(h, "/pod")
    assert got.memory_working_set_bytes == 0
    assert got.memory_limit_bytes == 65536
    # No cpu.stat, io.stat, pids.current, swap or events here.
    assert (got.cpu_usage_ns, got.io_read_bytes, got.oom_kills) == (0, 0, 0)
    assert got.swap_usage_bytes is None and got.pids_current is None


def test_v2_without_a_controller_on_the_host(tmp_path: Path) -> None:
    h = fake_v2(tmp_path, controllers="cpu")
    files(tmp_path / "pod", cpu__stat="usage_usec 2\n", memory__current="100\n")
    got = usage.read(h, "/pod")
    assert got.cpu_usage_ns == 2000
    assert got.memory_usage_bytes == 0 and got.pids_current is None
    with pytest.raises(FailedPrecondition, match=r"no memory cgroup controller"):
        limits.write(h, "/pod", Limits(memory_bytes=MiB))


def test_v1_figures_from_their_files(tmp_path: Path) -> None:
    h = fake_v1(tmp_path)
    files(tmp_path / "cpuacct/pod", cpuacct__usage="123456\n")
    files(tmp_path / "memory/pod", memory__usage_in_bytes="5000\n",
          memory__stat="rss 1\ntotal_rss 4000\ntotal_inactive_file 1000\n"
                       "total_pgfault 9\ntotal_pgmajfault 1\ninactive_file 7\n",
          memory__limit_in_bytes=f"{usage.V1_UNLIMITED}\n",
          memory__oom_control="oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
          memory__memsw__usage_in_bytes="5100\n")
    files(tmp_path / "blkio/pod", blkio__throttle__io_service_bytes_recursive=(
        "8:0 Read 10\n8:0 Write 20\n8:0 Sync 30\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 30\n"
        "8:16 Read 1\n8:16 Write 2\nTotal 33\n"))
    files(tmp_path / "pids/pod", pids__current="7\n")
    files(tmp_path / "cpu/pod")
    files(tmp_path / "cpuset/pod")
    got = usage.read(h, "/pod")
    assert got.cpu_usage_ns == 123456
    assert (got.memory_usage_bytes, got.memory_working_set_bytes, got.memory_rss_bytes) == \
        (5000, 4000, 4000)
    assert (got.page_faults, got.major_page_faults, got.oom_kills) == (9, 1, 5)
    assert got.memory_limit_bytes is None and got.swap_usage_bytes == 100
    assert (got.pids_current, got.io_read_bytes, got.io_write_bytes) == (7, 11, 22)


def test_v1_without_pids_or_memsw(tmp_path: Path) -> None:
    h = fake_v1(tmp_path, controllers=("cpu", "cpuacct", "memory"))
    files(tmp_path / "cpuacct/pod", cpuacct__usage="1\n")
    files(tmp_path / "cpu/pod")
    files(tmp_path / "memory/pod", memory__usage_in_bytes="10\n",
          memory__limit_in_bytes="4096\n")
    got = usage.read(h, "/pod")
    assert got.memory_limit_bytes == 4096
    assert got.pids_current is None and got.swap_usage_bytes is None
    assert got.io_read_bytes == got.io_write_bytes == 0
    with pytest.raises(FailedPrecondition, match=r"no pids cgroup controller"):
        limits.write(h, "/pod", Limits(pids_max=5))
    # Swap equal to memory asks for no swap: fine without swap accounting.
    limits.write(h, "/pod", Limits(memory_bytes=8192, memory_swap_bytes=8192))
    assert (tmp_path / "memory/pod/memory.limit_in_bytes").read_text().strip() == "8192"
    with pytest.raises(FailedPrecondition, match=r"does not account swap"):
        limits.write(h, "/pod", Limits(memory_bytes=8192, memory_swap_bytes=16384))


def test_cpu_weight_follows_runc_conversion() -> None:
    assert [limits.cpu_weight(s) for s in (1, 2, 3, 102, 512, 1024, 2048, 262144, 10**6)] == \
        [1, 1, 2, 17, 59, 100, 174, 10000, 10000]


def writes_of(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    written: list[tuple[str, str]] = []

    def record(directory: str, name: str, value: str) -> None:
        written.append((name, value))
        Path(directory, name).write_text(value)

    monkeypatch.setattr(limits, "_write", record)
    return written


def test_v2_limit_files_and_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = fake_v2(tmp_path)
    files(tmp_path / "pod", memory__max="max\n", memory__swap__max="max\n",
          cpu__weight="100\n", cpu__max="max 100000\n", cpuset__cpus="", cpuset__mems="",
          pids__max="max\n")
    written = writes_of(monkeypatch)
    limits.write(h, "/pod", Limits(memory_bytes=64 * MiB, memory_swap_bytes=96 * MiB,
                                   cpu_shares=1024, cpu_quota_us=50_000,
                                   cpu_period_us=100_000, cpuset_cpus="0-1", cpuset_mems="0",
                                   pids_max=10))
    assert written == [("cpuset.mems", "0"), ("cpuset.cpus", "0-1"), ("cpu.weight", "100"),
                       ("cpu.max", "50000 100000"), ("memory.max", str(64 * MiB)),
                       ("memory.swap.max", str(32 * MiB)), ("pids.max", "10")]
    written.clear()
    limits.write(h, "/pod", Limits(cpu_period_us=250_000))  # keeps the quota
    limits.write(h, "/pod", Limits(cpu_quota_us=-1))
    limits.write(h, "/pod", Limits(memory_bytes=-1))  # lifts swap too
    limits.write(h, "/pod", Limits(memory_bytes=-1, memory_swap_bytes=MiB))
    assert written == [("cpu.max", "50000 250000"), ("cpu.max", "max"),
                       ("memory.max", "max"), ("memory.swap.max", "max"),
                       ("memory.max", "max"), ("memory.swap.max", str(MiB))]


def test_v2_without_swap_accounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = fake_v2(tmp_path)
    files(tmp_path / "pod", memory__max="max\n")
    written = writes_of(monkeypatch)
    limits.write(h, "/pod", Limits(memory_bytes=MiB, memory_swap_bytes=MiB))  # no swap: fine
    assert written == [("memory.max", str(MiB))]
    with pytest.raises(FailedPrecondition, match=r"memory.swap.max"):
        limits.write(h, "/pod", Limits(memory_bytes=MiB, memory_swap_bytes=2 * MiB))


def test_v1_memory_and_memsw_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = fake_v1(tmp_path)
    files(tmp_path / "memory/pod", memory__limit_in_bytes=f"{100 * MiB}\n",
          memory__memsw__limit_in_bytes=f"{200 * MiB}\n")
    written = writes_of(monkeypatch)
    limits.write(h, "/pod", Limits(memory_bytes=300 * MiB, memory_swap_bytes=400 * MiB))
    assert [name for name, _ in written] == ["memory.memsw.limit_in_bytes",
                                             "memory.limit_in_bytes"]
    written.clear()
    limits.write(h, "/pod", Limits(memory_bytes=50 * MiB, memory_swap_bytes=60 * MiB))
    assert [name for name, _ in written] == ["memory.limit_in_bytes",
                                             "memory.memsw.limit_in_bytes"]
    written.clear()
    limits.write(h, "/pod", Limits(memory_bytes=-1))
    assert written == [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", "-1")]


def test_v1_cfs_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = fake_v1(tmp_path)
    files(tmp_path / "cpu/pod", cpu__cfs_period_us="100000\n", cpu__cfs_quota_us="-1\n")
    written = writes_of(monkeypatch)
    limits.write(h, "/pod", Limits(cpu_quota_us=20_000, cpu_period_us=50_000))
    limits.write(h, "/pod", Limits(cpu_quota_us=80_000, cpu_period_us=200_000))
    assert [name for name, _ in written] == [
        "cpu.cfs_quota_us", "cpu.cfs_period_us",  # shorter period: quota first
        "cpu.cfs_period_us", "cpu.cfs_quota_us"]  # longer period: period first


@pytest.mark.parametrize("key", ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control",
                                 "cgroup.kill", "cgroup.freeze", "cgroup.type",
                                 "cgroup.controllers"])
def test_unified_interface_files_are_refused(tmp_path: Path, key: str) -> None:
    h = fake_v2(tmp_path)
    files(tmp_path / "pod", **{key.replace(".", "__"): ""})
    with pytest.raises(InvalidArgument, match=rf"{key} is a cgroup interface file"):
        limits.write(h, "/pod", Limits(unified={key: "1"}))


@pytest.mark.parametrize("key", ["../memory.max", "sub/memory.max", ".", "..", "", "a\0b"])
def test_unified_keys_must_be_plain_file_names(tmp_path: Path, key: str) -> None:
    h = fake_v2(tmp_path)
    files(tmp_path / "pod", memory__max="max\n")
    (tmp_path / "pod/sub").mkdir()
    with pytest.raises(InvalidArgument, match=r"is not a file name"):
        limits.write(h, "/pod", Limits(unified={key: "1"}))


def test_unified_keys_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = fake_v2(tmp_path, controllers="cpu io memory")
    files(tmp_path / "pod", memory__high="max\n", memory__max="max\n", io__max="",
          cgroup__max__depth="max\n")
    (tmp_path / "pod/child").mkdir()
    with pytest.raises(InvalidArgument, match=r"nosuch.knob is not a file of the cgroup"):
        limits.write(h, "/pod", Limits(unified={"nosuch.knob": "1"}))
    with pytest.raises(InvalidArgument, match=r"child is not a file of the cgroup"):
        limits.write(h, "/pod", Limits(unified={"child": "1"}))
    with pytest.raises(FailedPrecondition, match=r"pids controller, which this host"):
        limits.write(h, "/pod", Limits(unified={"pids.max": "1"}))
    with pytest.raises(FailedPrecondition, match=r"cpu controller, which this cgroup"):
        limits.write(h, "/pod", Limits(unified={"cpu.weight": "1"}))
    written = writes_of(monkeypatch)
    limits.write(h, "/pod", Limits(memory_bytes=MiB, unified={
        "memory.high": "1000000", "cgroup.max.depth": "3",
        "io.max": "8:0 rbps=1\n\n8:16 wbps=2\n"}))
    # Typed limits first, unified after (they win), one line per write.
    assert written == [("memory.max", str(MiB)), ("memory.high", "1000000"),
                       ("cgroup.max.depth", "3"), ("io.max", "8:0 rbps=1"),
                       ("io.max", "8:16 wbps=2")]


def test_unified_on_a_gone_cgroup(tmp_path: Path) -> None:
    h = fake_v2(tmp_path)
    with pytest.raises(FileNotFoundError):
        limits.write(h, "/gone", Limits(unified={"memory.high": "1"}))
    with pytest.raises(FileNotFoundError):
        usage.read(h, "/gone")
