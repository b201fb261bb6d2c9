"""Mounts: validation, propagation, rro, overriding defaults, order, missing sources."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from podvisor.workers.runtime.spec_context import NodeFacts, PodContext
from podvisor.workers.runtime.spec_mounts import (
    cri_mounts,
    ensure_mount_sources,
    merge,
    mount_of,
    pod_file_mounts,
    shm_mount,
    system_mounts,
)

NODE = NodeFacts()
RRO_NODE = NodeFacts(mount_options=frozenset({"rro", "rbind"}))

MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:30 / /shared rw shared:5 - tmpfs tmpfs rw
31 22 0:31 / /slave rw master:5 - tmpfs tmpfs rw
32 22 0:32 / /private rw - tmpfs tmpfs rw
33 22 0:33 / /with\\040space rw shared:9 - tmpfs tmpfs rw
"""


def pod(**changes: Any) -> PodContext:
    base = dict(sandbox_id="s", hostname="h", cgroup_parent="/", netns_path=None,
                ipc_ns_path=None, uts_ns_path=None, pid_ns_path=None, shm_path=None,
                resolv_conf=None, hosts_file=None, hostname_file=None,
                privileged_caps=(), oom_score_adj_floor=0)
    base.update(changes)
    return PodContext(**base)


def mount(container_path: str, host_path: str, **fields: Any) -> api.Mount:
    return api.Mount(container_path=container_path, host_path=host_path, **fields)


def test_cri_mount_propagation_and_access(tmp_path: Path) -> None:
    mounts, rootfs_propagation = cri_mounts(
        [mount("/data", str(tmp_path)), mount("/ro", str(tmp_path), readonly=True)], NODE)
    assert mounts == [
        {"destination": "/data", "type": "bind", "source": str(tmp_path),
         "options": ["rbind", "rprivate", "rw"]},
        {"destination": "/ro", "type": "bind", "source": str(tmp_path),
         "options": ["rbind", "rprivate", "ro"]},
    ]
    assert rootfs_propagation is None


@pytest.mark.parametrize(("propagation", "option"), [
    ("PROPAGATION_HOST_TO_CONTAINER", "rslave"), ("PROPAGATION_BIDIRECTIONAL", "rshared")])
def test_propagation_modes_need_a_shared_source(propagation: str, option: str) -> None:
    # "/" is a shared mount in MOUNTINFO, so any existing path qualifies.
    mounts, rootfs_propagation = cri_mounts(
        [mount("/m", "/tmp", propagation=propagation)], NODE, MOUNTINFO)
    assert mounts[0]["options"] == ["rbind", option, "rw"]
    assert rootfs_propagation == option


def test_bidirectional_wins_over_host_to_container_for_the_rootfs() -> None:
    _, rootfs_propagation = cri_mounts(
        [mount("/a", "/tmp", propagation="PROPAGATION_HOST_TO_CONTAINER"),
         mount("/b", "/tmp", propagation=2)], NODE, MOUNTINFO)
    assert rootfs_propagation == "rshared"


def test_unknown_propagation_is_invalid() -> None:
    # proto3 enums are open: a number no cri-api we know defines parses.
    with pytest.raises(InvalidArgument, match="unknown propagation 9"):
        cri_mounts([mount("/m", "/tmp", propagation=9)], NODE, MOUNTINFO)


def test_mount_of_finds_the_closest_mount_point() -> None:
    assert mount_of("/shared/a/b", MOUNTINFO) == ("/shared", ["shared:5"])
    assert mount_of("/private", MOUNTINFO) == ("/private", [])
    assert mount_of("/with space/x", MOUNTINFO) == ("/with space", ["shared:9"])
    assert mount_of("/elsewhere", MOUNTINFO) == ("/", ["shared:1"])


def test_propagation_checks_follow_cri_o() -> None:
    private = MOUNTINFO.replace("shared:1 ", "")
    with pytest.raises(FailedPrecondition, match="not a shared mount"):
        cri_mounts([mount("/m", "/tmp", propagation="PROPAGATION_BIDIRECTIONAL")], NODE, private)
    with pytest.raises(FailedPrecondition, match="not a shared or slave mount"):
        cri_mounts([mount("/m", "/tmp", propagation="PROPAGATION_HOST_TO_CONTAINER")], NODE,
                   private)


def test_recursive_read_only(tmp_path: Path) -> None:
    wanted = mount("/rro", str(tmp_path), readonly=True, recursive_read_only=True)
    assert cri_mounts([wanted], RRO_NODE)[0][0]["options"] == ["rbind", "rprivate", "rro"]
    with pytest.raises(InvalidArgument, match="features list no 'rro'"):
        cri_mounts([wanted], NODE)
    with pytest.raises(InvalidArgument, match="conflicts with a read-write"):
        cri_mounts([mount("/rro", str(tmp_path), recursive_read_only=True)], RRO_NODE)
    with pytest.raises(InvalidArgument, match="needs private propagation"):
        cri_mounts([mount("/rro", str(tmp_path), readonly=True, recursive_read_only=True,
                          propagation="PROPAGATION_HOST_TO_CONTAINER")], RRO_NODE, MOUNTINFO)


@pytest.mark.parametrize(("container_path", "host_path", "error", "message"), [
    ("", "/tmp", InvalidArgument, "container_path is empty"),
    ("rel/dir", "/tmp", InvalidArgument, "not an absolute path"),
    ("/", "/tmp", InvalidArgument, "cover the container's rootfs"),
    ("/proc/sys", "/tmp", InvalidArgument, "inside /proc"),
    ("/proc/../proc/self", "/tmp", InvalidArgument, "inside /proc"),
    ("/data", "", InvalidArgument, "host_path is empty"),
    ("/data", "relative", InvalidArgument, "host_path 'relative' is not an absolute path"),
    ("/data", "/nonexistent-" + uuid.uuid4().hex, InvalidArgument, "does not exist"),
])
def test_invalid_mounts(container_path: str, host_path: str, error: type[Exception],
                        message: str) -> None:
    with pytest.raises(error, match=message):
        cri_mounts([mount(container_path, host_path)], NODE)


def test_proc_files_runc_allows_may_be_bound(tmp_path: Path) -> None:
    source = tmp_path / "meminfo"
    source.write_text("MemTotal: 1 kB\n")
    mounts, _ = cri_mounts([mount("/proc/meminfo", str(source))], NODE)
    assert mounts[0]["destination"] == "/proc/meminfo"


def test_duplicates_and_idmapped_mounts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="mounted twice"):
        cri_mounts([mount("/d", str(tmp_path)), mount("/d/", str(tmp_path))], NODE)
    with pytest.raises(Unimplemented, match="idmapped"):
        cri_mounts([mount("/d", str(tmp_path), uidMappings=[api.IDMapping(length=1)])], NODE)


def test_an_image_volume_binds_its_mounted_image_read_only(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "escape").symlink_to("/etc")
    image = api.ImageSpec(image="busybox")
    [whole], _ = cri_mounts([api.Mount(container_path="/img", readonly=True, image=image)],
                            NODE, image_volumes=[str(tmp_path)])
    assert whole == {"destination": "/img", "type": "bind", "source": str(tmp_path),
                     "options": ["rbind", "rprivate", "ro", "nosuid", "nodev"]}
    [sub], _ = cri_mounts([api.Mount(container_path="/img", readonly=True, image=image,
                                     image_sub_path="etc/")], NODE,
                          image_volumes=[str(tmp_path)])
    assert sub["source"] == str(tmp_path / "etc")
    for bad, error in (("escape", InvalidArgument), ("gone", NotFound), ("../x", InvalidArgument)):
        with pytest.raises(error):
            cri_mounts([api.Mount(container_path="/img", readonly=True, image=image,
                                  image_sub_path=bad)], NODE, image_volumes=[str(tmp_path)])
    with pytest.raises(InvalidArgument, match="read-only"):
        cri_mounts([api.Mount(container_path="/img", image=image)], NODE,
                   image_volumes=[str(tmp_path)])


def test_symlinked_source_is_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    mounts, _ = cri_mounts([mount("/d", str(tmp_path / "link"))], NODE)
    assert mounts[0]["source"] == str(tmp_path / "real")


def test_cri_mounts_override_defaults_and_parents_come_first(tmp_path: Path) -> None:
    files = pod(shm_path="/run/pod/shm", resolv_conf="/run/pod/resolv.conf",
                hosts_file="/run/pod/hosts", hostname_file="/run/pod/hostname")
    defaults = [*system_mounts(False), shm_mount(files), *pod_file_mounts(files, False)]
    requested, _ = cri_mounts([mount("/etc/hosts", str(tmp_path)),
                               mount("/var/lib/app/cache", str(tmp_path)),
                               mount("/etc", str(tmp_path)),
                               mount("/dev/termination-log", str(tmp_path))], NODE)
    merged = merge(defaults, requested)
    destinations = [m["destination"] for m in merged]
    hosts = [m for m in merged if m["destination"] == "/etc/hosts"]
    assert len(hosts) == 1 and hosts[0]["source"] == str(tmp_path)
    for child in destinations:
        for parent in destinations:
            if child.startswith(parent + "/"):
                assert destinations.index(parent) < destinations.index(child), (parent, child)
    assert destinations.index("/etc") < destinations.index("/etc/resolv.conf")


def test_a_cri_dev_or_sys_mount_replaces_everything_below_it(tmp_path: Path) -> None:
    requested, _ = cri_mounts([mount("/dev", str(tmp_path)), mount("/sys", str(tmp_path))], NODE)
    merged = merge([*system_mounts(False), shm_mount(pod())], requested)
    assert [m["destination"] for m in merged] == ["/proc", "/dev", "/sys"]


def test_system_mounts_read_only_sys_unless_privileged() -> None:
    by_dest = {m["destination"]: m for m in system_mounts(False)}
    assert "ro" in by_dest["/sys"]["options"]
    assert "ro" in by_dest["/sys/fs/cgroup"]["options"]
    assert "size=65536k" in by_dest["/dev"]["options"]
    privileged = {m["destination"]: m for m in system_mounts(True)}
    assert "rw" in privileged["/sys"]["options"]
    assert "rw" in privileged["/sys/fs/cgroup"]["options"]


def test_shm_is_the_pod_s_or_the_host_s_for_host_ipc() -> None:
    assert shm_mount(pod(shm_path="/run/pv/shm/x"))["source"] == "/run/pv/shm/x"
    assert shm_mount(pod())["source"] == "/dev/shm"


def test_pod_files_follow_readonly_rootfs() -> None:
    files = pod(resolv_conf="/r", hosts_file="/h", hostname_file="/n")
    assert all(m["options"][0] == "ro" for m in pod_file_mounts(files, True))
    assert all(m["options"][0] == "rw" for m in pod_file_mounts(files, False))
    assert pod_file_mounts(pod(), False) == []


def test_ensure_mount_sources_creates_dirs_like_cri_o(tmp_path: Path) -> None:
    missing = tmp_path / "a" / "b"
    config = api.ContainerConfig(mounts=[mount("/x", str(missing)), mount("/y", str(tmp_path))])
    assert ensure_mount_sources(config) == [str(missing)]
    assert missing.is_dir()
    assert ensure_mount_sources(config) == []


def test_ensure_mount_sources_rejects_listed_paths(tmp_path: Path) -> None:
    missing = tmp_path / "hostname"
    with pytest.raises(InvalidArgument, match="does not exist"):
        ensure_mount_sources(api.ContainerConfig(mounts=[mount("/etc/hostname", str(missing))]),
                             absent_to_reject={str(missing)})
    assert not missing.exists()
