"""cgroup paths, resource limits, oom_score_adj and devices."""

from __future__ import annotations

import os
import resource
import stat
from pathlib import Path

import pytest

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import InvalidArgument
from podvisor.workers.runtime.spec_context import NodeFacts, detect_node, nofile_ceiling
from podvisor.workers.runtime.spec_devices import ALLOW_ALL, DEFAULT_RULES, devices, host_devices
from podvisor.workers.runtime.spec_resources import cgroups_path, linux_resources, oom_score_adj

V1 = NodeFacts(controllers=frozenset({"cpu", "memory", "pids", "hugetlb"}), swap_accounting=True)
V2 = NodeFacts(cgroup_v2=True, controllers=frozenset({"cpu", "memory", "pids"}))
SYSTEMD = NodeFacts(cgroup_manager="systemd")


def test_cgroupfs_path() -> None:
    assert cgroups_path("/kubepods/besteffort/pod1", "abc", V1) == \
        "/kubepods/besteffort/pod1/podvisor-abc"
    assert cgroups_path("", "abc", V1) == "/podvisor/podvisor-abc"
    assert cgroups_path("/../../x", "abc", V1) == "/x/podvisor-abc"
    with pytest.raises(InvalidArgument, match="is a systemd slice"):
        cgroups_path("kubepods-pod1.slice", "abc", V1)


def test_systemd_path() -> None:
    assert cgroups_path("kubepods-besteffort-pod1.slice", "abc", SYSTEMD) == \
        "kubepods-besteffort-pod1.slice:podvisor:abc"
    assert cgroups_path("", "abc", SYSTEMD) == "system.slice:podvisor:abc"
    with pytest.raises(InvalidArgument, match="needs a slice name"):
        cgroups_path("/kubepods/pod1", "abc", SYSTEMD)


R = api.LinuxContainerResources


def test_cpu_and_memory() -> None:
    resources = R(cpu_period=100000, cpu_quota=50000, cpu_shares=512, cpuset_cpus="0-1",
                  cpuset_mems="0", memory_limit_in_bytes=268435456)
    assert linux_resources(resources, V1) == {
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "memory": {"limit": 268435456, "swap": 268435456},   # no swap unless asked
    }


def test_zero_means_unset() -> None:
    assert linux_resources(R(), V1) == {}
    assert linux_resources(R(cpu_shares=0, memory_limit_in_bytes=0), V1) == {}


def test_swap() -> None:
    limit = 64 << 20
    assert linux_resources(R(memory_limit_in_bytes=limit,
                             memory_swap_limit_in_bytes=128 << 20), V1)["memory"] == \
        {"limit": 64 << 20, "swap": 128 << 20}
    assert linux_resources(R(memory_limit_in_bytes=limit,
                             memory_swap_limit_in_bytes=-1), V1)["memory"]["swap"] == -1
    # Without swap accounting runc would refuse the swap field.
    assert linux_resources(R(memory_limit_in_bytes=limit), V2)["memory"] == {"limit": 64 << 20}
    with pytest.raises(InvalidArgument, match="cannot be lower than the memory limit"):
        linux_resources(R(memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=1 << 20), V1)


def test_memory_below_the_runtime_minimum_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="at least 12582912 bytes"):
        linux_resources(R(memory_limit_in_bytes=4 << 20), V1)
    small = NodeFacts(min_memory=500 * 1024)
    assert linux_resources(R(memory_limit_in_bytes=4 << 20), small)["memory"]["limit"] \
        == 4 << 20


def test_hugepages_only_with_hugetlb() -> None:
    resources = R(hugepage_limits=[api.HugepageLimit(page_size="2MB", limit=1073741824)])
    assert linux_resources(resources, V1)["hugepageLimits"] == [
        {"pageSize": "2MB", "limit": 1073741824}]
    assert "hugepageLimits" not in linux_resources(resources, V2)


def test_unified_only_on_cgroup_v2() -> None:
    resources = R(unified={"memory.high": "1000000"})
    assert linux_resources(resources, V2)["unified"] == {"memory.high": "1000000"}
    with pytest.raises(InvalidArgument, match="cgroup v1"):
        linux_resources(resources, V1)


def test_pids_limit_from_node_config() -> None:
    assert "pids" not in linux_resources(R(), V1)
    limited = NodeFacts(controllers=frozenset({"pids"}), pids_limit=1024)
    assert linux_resources(R(), limited)["pids"] == {"limit": 1024}


def test_oom_score_adj_never_below_the_daemon_s() -> None:
    assert oom_score_adj(R(oom_score_adj=1000), 0) == 1000
    assert oom_score_adj(R(oom_score_adj=-997), 0) == 0
    assert oom_score_adj(R(oom_score_adj=-997), -999) == -997
    assert oom_score_adj(R(), -500) == 0
    with pytest.raises(InvalidArgument):
        oom_score_adj(R(oom_score_adj=1001), 0)


def test_cri_device_is_stat_ed_on_the_host() -> None:
    nodes, rules = devices([api.Device(host_path="/dev/null", container_path="/dev/mynull",
                                       permissions="rw")], privileged=False)
    assert nodes[0]["path"] == "/dev/mynull"
    assert (nodes[0]["type"], nodes[0]["major"], nodes[0]["minor"]) == ("c", 1, 3)
    assert rules[:len(DEFAULT_RULES)] == list(DEFAULT_RULES)
    assert rules[-1] == {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}


def test_cri_device_defaults_to_rwm_and_its_host_path() -> None:
    nodes, rules = devices([api.Device(host_path="/dev/zero")], privileged=False)
    assert nodes[0]["path"] == "/dev/zero"
    assert rules[-1]["access"] == "rwm"


@pytest.mark.parametrize(("device", "message"), [
    ({"host_path": "/dev/does-not-exist", "container_path": "/dev/x"}, "No such file"),
    ({"host_path": "/etc/passwd", "container_path": "/dev/x"}, "not a device node"),
    ({"host_path": "dev/null", "container_path": "/dev/x"}, "not an absolute path"),
    ({"host_path": "/dev/null", "container_path": "/dev/x", "permissions": "rwx"}, "rwm"),
])
def test_bad_devices_are_invalid(device: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        devices([api.Device(**device)], privileged=False)


@pytest.fixture
def fake_dev(tmp_path: Path) -> Path:
    """A /dev with a char and a block node, plus what the walk must skip."""
    dev = tmp_path / "dev"
    (dev / "pts").mkdir(parents=True)
    (dev / "disk").mkdir()
    os.mknod(dev / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(dev / "disk" / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mknod(dev / "pts" / "0", stat.S_IFCHR | 0o620, os.makedev(136, 0))
    os.mknod(dev / "console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
    (dev / "stdin").symlink_to("/proc/self/fd/0")
    (dev / "regular").write_text("")
    return dev


def test_host_devices_walk(fake_dev: Path) -> None:
    found = {d["path"]: d for d in host_devices(str(fake_dev))}
    assert sorted(found) == ["/dev/disk/loop0", "/dev/null"]
    assert found["/dev/disk/loop0"]["type"] == "b"
    assert found["/dev/disk/loop0"]["fileMode"] == stat.S_IMODE(
        (fake_dev / "disk" / "loop0").stat().st_mode)


def test_privileged_gets_every_host_device_and_allow_all(fake_dev: Path) -> None:
    nodes, rules = devices([api.Device(host_path="/dev/zero", container_path="/dev/null")],
                           privileged=True, dev_root=str(fake_dev))
    by_path = {n["path"]: n for n in nodes}
    assert sorted(by_path) == ["/dev/disk/loop0", "/dev/null"]
    assert by_path["/dev/null"]["minor"] == 5          # the CRI's node wins
    assert rules == list(ALLOW_ALL)


def test_a_directory_device_brings_its_nodes(fake_dev: Path) -> None:
    nodes, _ = devices([api.Device(host_path=str(fake_dev / "disk"),
                                   container_path="/dev/block")], privileged=False)
    assert [n["path"] for n in nodes] == ["/dev/block/loop0"]


def test_detect_node_cgroup_v2(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (tmp_path / "system.slice").mkdir()
    (tmp_path / "system.slice" / "memory.swap.max").write_text("max\n")
    node = detect_node("systemd", frozenset({"rro"}), cgroup_root=str(tmp_path))
    assert node.cgroup_v2 and node.swap_accounting
    assert node.controllers == {"cpuset", "cpu", "io", "memory", "hugetlb", "pids"}
    assert (node.cgroup_manager, node.mount_options) == ("systemd", frozenset({"rro"}))


def test_detect_node_cgroup_v1(tmp_path: Path) -> None:
    for name in ("cpu", "memory", "pids"):
        (tmp_path / name).mkdir()
    node = detect_node(cgroup_root=str(tmp_path))
    assert not node.cgroup_v2 and not node.swap_accounting
    assert node.controllers == {"cpu", "memory", "pids"}


def test_nofile_never_above_what_the_daemon_may_grant() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    effective = int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                         if line.startswith("CapEff:")).split()[1], 16)
    ceiling = nofile_ceiling()
    assert ceiling <= 1048576
    if not effective >> 24 & 1:       # no CAP_SYS_RESOURCE: the hard limit binds
        assert ceiling <= hard
