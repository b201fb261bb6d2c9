"""The cgroup hierarchy as read from mountinfo, and where the driver puts
pods and monitors on each kind of host (no daemon, no cgroup written)."""

from __future__ import annotations

from pathlib import Path

import pytest

from podvisor.proto.errors import InvalidArgument
from podvisor.workers.runtime.cgroup import tree
from podvisor.workers.runtime.cgroup.driver import Driver
from podvisor.workers.runtime.cgroup.hierarchy import HYBRID, V1, V2, Hierarchy, NoCgroups, parse

CID = "ab" * 32

V1_LINES = """\
25 20 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid shared:5 - cgroup cgroup rw,xattr,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/pids rw,nosuid shared:11 - cgroup cgroup rw,pids
"""
HYBRID_LINE = ("27 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:6 - cgroup2 cgroup2 "
               "rw,nsdelegate\n")
V2_LINE = "25 20 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def test_v1_names_each_controller_of_a_combined_mount() -> None:
    h = parse(V1_LINES)
    assert h.mode == V1 and h.unified is None
    assert h.v1["cpu"] == h.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert h.dir("cpuacct", "/a") == "/sys/fs/cgroup/cpu,cpuacct/a"
    assert h.dir("io", "/a") is None
    assert h.controllers == {"cpu", "cpuacct", "memory", "pids"}
    # One directory per mount, the combined one once.
    assert h.dirs("/kubepods/pod1") == [
        "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1", "/sys/fs/cgroup/memory/kubepods/pod1",
        "/sys/fs/cgroup/pids/kubepods/pod1", "/sys/fs/cgroup/systemd/kubepods/pod1"]
    assert h.procs_dir("/a") == "/sys/fs/cgroup/pids/a"


def test_hybrid_adds_the_unified_mount_and_stays_per_controller() -> None:
    h = parse(V1_LINES + HYBRID_LINE)
    assert (h.mode, h.is_v2, h.unified) == (HYBRID, False, "/sys/fs/cgroup/unified")
    assert "/sys/fs/cgroup/unified/a" in h.dirs("/a")
    assert h.dir("memory", "/a") == "/sys/fs/cgroup/memory/a"


def test_v2_is_one_directory_with_the_root_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    line = V2_LINE.replace("/sys/fs/cgroup", str(tmp_path))
    h = parse(line, root=str(tmp_path))
    assert h.mode == V2 and h.is_v2
    assert h.dirs("/kubepods/pod1") == [f"{tmp_path}/kubepods/pod1"]
    assert h.dir("memory", "/a") == f"{tmp_path}/a"
    assert h.dir("hugetlb", "/a") is None
    assert h.procs_dir("/") == str(tmp_path)


def test_mounts_elsewhere_are_ignored_and_none_is_an_error() -> None:
    elsewhere = V2_LINE.replace("/sys/fs/cgroup", "/mnt/cg")
    with pytest.raises(NoCgroups):
        parse(elsewhere)


def test_populated_reads_cgroup_events_on_v2(tmp_path: Path) -> None:
    pod = tmp_path / "pod"
    pod.mkdir()
    h = Hierarchy(V2, str(tmp_path), {}, str(tmp_path), frozenset({"memory"}))
    (pod / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert tree.populated(h, "/pod")
    (pod / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    assert not tree.populated(h, "/pod")
    assert not tree.populated(h, "/gone")


def _driver(manager: str, conmon_cgroup: str = "pod") -> Driver:
    return Driver(manager, Hierarchy(V2, "/sys/fs/cgroup", {}, "/sys/fs/cgroup"), conmon_cgroup)


def test_systemd_driver_keeps_the_slice_and_expands_it() -> None:
    d = _driver("systemd")
    slice_name = "kubepods-burstable-pod1234_5678.slice"
    assert d.pod_parent(slice_name, CID) == slice_name
    assert d.path(slice_name) == ("/kubepods.slice/kubepods-burstable.slice/"
                                  "kubepods-burstable-pod1234_5678.slice")
    assert d.pod_parent("", CID) == "system.slice"
    # The kubelet sends the expanded path (cgroupName.ToSystemd), critest "/test.slice".
    assert d.pod_parent(d.path(slice_name), CID) == slice_name
    assert d.pod_parent("/test.slice", CID) == "test.slice"
    for bad in ("/kubepods/burstable/pod1", "kubepods--x.slice", "/a/b--c.slice"):
        with pytest.raises(InvalidArgument):
            d.pod_parent(bad, CID)


def test_cgroupfs_driver_refuses_a_slice_and_defaults_per_pod() -> None:
    d = _driver("cgroupfs")
    assert d.pod_parent("", CID) == f"/podvisor/pod-{CID[:12]}"
    assert d.pod_parent("/kubepods//burstable/pod1/", CID) == "/kubepods/burstable/pod1"
    for bad in ("kubepods-burstable-pod1.slice", "/kubepods.slice/kubepods-pod1.slice",
                "relative/path", "/a/../b"):
        with pytest.raises(InvalidArgument):
            d.pod_parent(bad, CID)


@pytest.mark.parametrize(("manager", "conmon_cgroup", "parent", "place"), [
    ("cgroupfs", "pod", "/kubepods/pod1", f"/kubepods/pod1/podvisor-conmon-{CID}"),
    ("cgroupfs", "/system.slice/podvisor", "/kubepods/pod1",
     f"/system.slice/podvisor/podvisor-conmon-{CID}"),
    ("systemd", "pod", "kubepods-pod1.slice",
     f"/kubepods.slice/kubepods-pod1.slice/podvisor-conmon-{CID}.scope"),
    ("systemd", "system.slice", "kubepods-pod1.slice",
     f"/system.slice/podvisor-conmon-{CID}.scope"),
])
def test_a_monitor_gets_a_leaf_of_its_own(manager: str, conmon_cgroup: str, parent: str,
                                           place: str) -> None:
    assert _driver(manager, conmon_cgroup).conmon_place(CID, parent) == place
