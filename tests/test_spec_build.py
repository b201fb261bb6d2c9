"""The whole config.json from build_container_spec and build_infra_spec, without a runtime."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import FailedPrecondition, InvalidArgument
from podvisor.proto.idmap import IdMap, IdRange
from podvisor.workers.runtime import specs
from podvisor.workers.runtime.spec import (
    INFRA_ARGS,
    NodeFacts,
    PodContext,
    build_container_spec,
    build_infra_spec,
)
from podvisor.workers.runtime.spec_devices import ALLOW_ALL
from podvisor.workers.runtime.spec_security import CAPABILITIES, DEFAULT_MASKED_PATHS

NODE = NodeFacts(controllers=frozenset({"cpu", "memory"}), swap_accounting=True, nofile=4096)
CAPS = tuple(c for c in CAPABILITIES if c != "CAP_SYS_RESOURCE")
POD_NAMESPACES = [
    {"type": "pid"}, {"type": "network", "path": "/run/pv/netns/sb1"},
    {"type": "ipc", "path": "/run/pv/ns/ipc/sb1"}, {"type": "uts", "path": "/run/pv/ns/uts/sb1"},
    {"type": "mount"}]
IMAGE = {"architecture": "amd64", "config": {
    "Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/bin", "LANG=C"],
    "WorkingDir": "/srv", "User": "app", "StopSignal": "SIGQUIT"}}


@pytest.fixture
def rootfs(tmp_path: Path) -> str:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1000:1000::/srv:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nwww:x:33:app\n")
    return str(root)


def pod_context(**changes: Any) -> PodContext:
    fields: dict[str, Any] = dict(
        sandbox_id="sb1", hostname="web-0", cgroup_parent="/kubepods/pod-uid-1",
        netns_path="/run/pv/netns/sb1", ipc_ns_path="/run/pv/ns/ipc/sb1",
        uts_ns_path="/run/pv/ns/uts/sb1", pid_ns_path=None, shm_path="/run/pv/shm/sb1",
        resolv_conf="/run/pv/pods/sb1/resolv.conf", hosts_file="/run/pv/pods/sb1/hosts",
        hostname_file="/run/pv/pods/sb1/hostname", privileged_caps=CAPS, oom_score_adj_floor=0)
    fields.update(changes)
    return PodContext(**fields)


def pod_sandbox() -> api.PodSandboxConfig:
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="web", namespace="prod", uid="pod-uid-1",
                                        attempt=1),
        log_directory="/var/log/pods/prod_web_pod-uid-1",
        annotations={"pod-note": "x"},
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent="/kubepods/pod-uid-1",
            sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=api.NamespaceOption(pid=api.CONTAINER))))


def container(**changes: Any) -> api.ContainerConfig:
    fields: dict[str, Any] = dict(
        metadata=api.ContainerMetadata(name="app", attempt=2),
        image=api.ImageSpec(image="sha256:abc", user_specified_image="registry.test/app:1"),
        envs=[api.KeyValue(key="MODE", value=b"prod")],
        labels={"io.kubernetes.container.name": "app"},
        annotations={"io.kubernetes.container.restartCount": "2"},
        linux=api.LinuxContainerConfig(
            resources=api.LinuxContainerResources(cpu_shares=256,
                                                  memory_limit_in_bytes=134217728,
                                                  oom_score_adj=-997),
            security_context=api.LinuxContainerSecurityContext(
                namespace_options=api.NamespaceOption(pid=api.CONTAINER),
                no_new_privs=True,
                masked_paths=["/proc/kcore"],
                readonly_paths=["/proc/sys", "/proc/bus"])),
    )
    fields.update(changes)
    return api.ContainerConfig(**fields)


def build(rootfs: str, config: api.ContainerConfig | None = None,
          pod: PodContext | None = None, sandbox: api.PodSandboxConfig | None = None,
          **kwargs: Any) -> dict[str, Any]:
    return build_container_spec(config or container(), sandbox or pod_sandbox(), IMAGE, rootfs,
                                pod or pod_context(), container_id="c1", node=NODE, **kwargs)


def test_container_spec(rootfs: str) -> None:
    spec = build(rootfs)
    process = spec["process"]
    assert spec["ociVersion"] == "1.0.2"
    assert process["args"] == ["/bin/app", "--serve"]
    assert process["env"] == ["PATH=/bin", "HOSTNAME=web-0", "LANG=C", "MODE=prod"]
    assert process["cwd"] == "/srv"
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 33]}
    assert process["terminal"] is False
    assert process["noNewPrivileges"] is True
    assert process["oomScoreAdj"] == 0                  # -997 clamped to the daemon's 0
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]
    assert len(process["capabilities"]["bounding"]) == 9
    assert spec["root"] == {"path": rootfs, "readonly": False}
    assert spec["hostname"] == "web-0"

    linux = spec["linux"]
    assert linux["namespaces"] == POD_NAMESPACES
    assert linux["cgroupsPath"] == "/kubepods/pod-uid-1/podvisor-c1"
    assert linux["resources"]["cpu"] == {"shares": 256}
    assert linux["resources"]["memory"] == {"limit": 134217728, "swap": 134217728}
    assert linux["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert linux["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert linux["maskedPaths"] == sorted(DEFAULT_MASKED_PATHS)   # /proc/kcore is one already
    assert linux["readonlyPaths"] == ["/proc/sys", "/proc/bus"]
    assert "rootfsPropagation" not in linux

    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/dev/shm"]["source"] == "/run/pv/shm/sb1"
    assert mounts["/etc/resolv.conf"]["source"] == "/run/pv/pods/sb1/resolv.conf"
    assert mounts["/etc/hostname"]["options"][0] == "rw"

    assert spec["annotations"] == {
        "io.kubernetes.container.restartCount": "2",
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.sandbox-id": "sb1",
        "io.kubernetes.cri.sandbox-name": "web",
        "io.kubernetes.cri.sandbox-namespace": "prod",
        "io.kubernetes.cri.sandbox-uid": "pod-uid-1",
        "io.kubernetes.cri.image-name": "registry.test/app:1",
        "org.opencontainers.image.stopSignal": "SIGQUIT",
    }
    json.dumps(spec)   # a plain JSON document, nothing else in it


def test_same_inputs_same_document(rootfs: str) -> None:
    assert json.dumps(build(rootfs), sort_keys=True) == json.dumps(build(rootfs), sort_keys=True)


def test_the_handlers_annotations_win_over_the_cris(rootfs: str) -> None:
    # crun under the systemd driver: the container stays in its scope,
    # whatever a pod's annotations ask.
    node = NodeFacts(runtime_annotations=(("run.oci.systemd.subgroup", ""),))
    asked = container(annotations={"run.oci.systemd.subgroup": "elsewhere"})
    spec = build_container_spec(asked, pod_sandbox(), IMAGE, rootfs, pod_context(),
                                container_id="c1", node=node)
    assert spec["annotations"]["run.oci.systemd.subgroup"] == ""
    infra = build_infra_spec(pod_sandbox(), pod_context(), rootfs, node=node)
    assert infra["annotations"]["run.oci.systemd.subgroup"] == ""
    assert "run.oci.systemd.subgroup" not in build(rootfs)["annotations"]


def test_crun_under_systemd_is_told_to_keep_containers_in_their_scope() -> None:
    assert specs.node_facts("systemd", "crun", "/usr/bin/crun").runtime_annotations == \
        (("run.oci.systemd.subgroup", ""),)
    assert specs.node_facts("systemd", "runc", "/usr/sbin/runc").runtime_annotations == ()
    assert specs.node_facts("cgroupfs", "crun", "/usr/bin/crun").runtime_annotations == ()


def test_image_config_section_alone_is_accepted(rootfs: str) -> None:
    spec = build_container_spec(container(), pod_sandbox(), IMAGE["config"], rootfs,
                                pod_context(), container_id="c1", node=NODE)
    assert spec["process"]["args"] == ["/bin/app", "--serve"]


def test_readonly_rootfs_makes_pod_files_read_only(rootfs: str) -> None:
    config = container()
    config.linux.security_context.readonly_rootfs = True
    spec = build(rootfs, config)
    assert spec["root"]["readonly"] is True
    assert all(m["options"][0] == "ro" for m in spec["mounts"]
               if m["destination"].startswith("/etc/"))


def test_no_resources_no_oom_score_adj(rootfs: str) -> None:
    config = container()
    config.linux.ClearField("resources")
    assert "oomScoreAdj" not in build(rootfs, config)["process"]


def test_host_namespaces_pod(rootfs: str) -> None:
    pod = pod_context(netns_path=None, ipc_ns_path=None, uts_ns_path=None, shm_path=None)
    sandbox = pod_sandbox()
    sandbox.linux.sysctls.clear()
    spec = build(rootfs, pod=pod, sandbox=sandbox)
    assert [ns["type"] for ns in spec["linux"]["namespaces"]] == ["pid", "mount"]
    assert "hostname" not in spec      # no private UTS namespace: the runtime would refuse it
    assert {m["destination"]: m for m in spec["mounts"]}["/dev/shm"]["source"] == "/dev/shm"


def test_net_sysctl_in_a_host_network_pod_is_invalid(rootfs: str) -> None:
    with pytest.raises(InvalidArgument, match="host network"):
        build(rootfs, pod=pod_context(netns_path=None))


@pytest.mark.parametrize(("mode", "pid_ns", "expected"), [
    ("POD", "/proc/42/ns/pid", [{"type": "pid", "path": "/proc/42/ns/pid"}]),
    ("CONTAINER", None, [{"type": "pid"}]),
    ("NODE", None, []),
])
def test_pid_namespace_modes(rootfs: str, mode: str, pid_ns: str | None,
                             expected: list[dict[str, str]]) -> None:
    config = container()
    config.linux.security_context.namespace_options.CopyFrom(api.NamespaceOption(pid=mode))
    spec = build(rootfs, config, pod=pod_context(pid_ns_path=pid_ns))
    assert [ns for ns in spec["linux"]["namespaces"] if ns["type"] == "pid"] == expected


def test_pod_pid_namespace_without_one_is_a_failed_precondition(rootfs: str) -> None:
    config = container()
    config.linux.security_context.ClearField("namespace_options")   # POD is the zero value
    with pytest.raises(FailedPrecondition, match="shared PID namespace"):
        build(rootfs, config)


def test_target_pid_namespace(rootfs: str) -> None:
    config = container()
    config.linux.security_context.namespace_options.CopyFrom(
        api.NamespaceOption(pid=api.TARGET, target_id="other"))
    with pytest.raises(InvalidArgument, match="'other'"):
        build(rootfs, config)
    spec = build(rootfs, config, target_pid_ns="/proc/7/ns/pid")
    assert spec["linux"]["namespaces"][0] == {"type": "pid", "path": "/proc/7/ns/pid"}


def test_unknown_namespace_mode_is_invalid(rootfs: str) -> None:
    # proto3 enums are open: a number no cri-api we know defines parses.
    config = container()
    config.linux.security_context.namespace_options.network = 7  # type: ignore[assignment]
    with pytest.raises(InvalidArgument, match=r"namespace_options\.network: unknown value 7"):
        build(rootfs, config)


def test_cgroup_namespace_on_v2_only_for_unprivileged(rootfs: str) -> None:
    v2 = NodeFacts(cgroup_v2=True)
    spec = build_container_spec(container(), pod_sandbox(), IMAGE, rootfs, pod_context(),
                                container_id="c1", node=v2)
    assert spec["linux"]["namespaces"][-1] == {"type": "cgroup"}


def test_privileged_container_needs_a_privileged_pod(rootfs: str) -> None:
    config = container()
    config.linux.security_context.privileged = True
    with pytest.raises(InvalidArgument, match="privileged but its pod sandbox is not"):
        build(rootfs, config)


def test_privileged_container(rootfs: str, tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    os.mknod(dev / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    config = container()
    config.linux.security_context.privileged = True
    config.linux.security_context.capabilities.CopyFrom(
        api.Capability(drop_capabilities=["ALL"]))
    sandbox = pod_sandbox()
    sandbox.linux.security_context.CopyFrom(api.LinuxSandboxSecurityContext(privileged=True))
    spec = build(rootfs, config, sandbox=sandbox, dev_root=str(dev))
    assert spec["process"]["capabilities"]["effective"] == list(CAPS)
    assert spec["linux"]["maskedPaths"] == spec["linux"]["readonlyPaths"] == []
    assert [d["path"] for d in spec["linux"]["devices"]] == ["/dev/loop0"]
    assert spec["linux"]["resources"]["devices"] == list(ALLOW_ALL)
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert "rw" in mounts["/sys"]["options"] and "rw" in mounts["/sys/fs/cgroup"]["options"]


def test_cri_mount_and_device_reach_the_spec(rootfs: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = container(mounts=[api.Mount(container_path="/data", host_path=str(data),
                                         readonly=True, selinux_relabel=True)],
                       devices=[api.Device(container_path="/dev/xnull", host_path="/dev/null",
                                           permissions="rw")])
    spec = build(rootfs, config)
    assert {"destination": "/data", "type": "bind", "source": str(data),
            "options": ["rbind", "rprivate", "ro"]} in spec["mounts"]
    assert spec["linux"]["devices"][0]["path"] == "/dev/xnull"


def test_missing_name_is_invalid(rootfs: str) -> None:
    with pytest.raises(InvalidArgument, match="name is empty"):
        build(rootfs, container(metadata=api.ContainerMetadata()))


def test_unknown_image_user_is_invalid(rootfs: str) -> None:
    image = {"config": {**IMAGE["config"], "User": "ghost"}}
    with pytest.raises(InvalidArgument, match="unable to find user ghost"):
        build_container_spec(container(), pod_sandbox(), image, rootfs, pod_context(),
                             container_id="c1", node=NODE)


def test_infra_spec() -> None:
    sandbox = pod_sandbox()
    sandbox.linux.security_context.CopyFrom(api.LinuxSandboxSecurityContext(
        run_as_user=api.Int64Value(value=65535), run_as_group=api.Int64Value(value=65535)))
    pod = pod_context(oom_score_adj_floor=-500)
    spec = build_infra_spec(sandbox, pod, "/run/pv/infra-rootfs", node=NODE)
    process = spec["process"]
    assert process["args"] == list(INFRA_ARGS) == ["/catatonit", "-P"]
    assert process["user"] == {"uid": 65535, "gid": 65535, "additionalGids": [65535]}
    assert process["capabilities"]["bounding"] == []
    assert process["noNewPrivileges"] is True
    assert process["oomScoreAdj"] == -500                # CRI-O's -998, clamped to the floor
    assert spec["root"] == {"path": "/run/pv/infra-rootfs", "readonly": True}
    assert spec["hostname"] == "web-0"
    assert spec["linux"]["namespaces"] == POD_NAMESPACES
    assert spec["linux"]["cgroupsPath"] == "/kubepods/pod-uid-1/podvisor-sb1"
    assert spec["linux"]["resources"]["cpu"] == {"shares": 2}
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert {m["destination"] for m in spec["mounts"]} == {
        "/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup"}
    assert spec["annotations"]["io.kubernetes.cri.container-type"] == "sandbox"
    assert spec["annotations"]["io.kubernetes.cri.sandbox-log-directory"] == \
        "/var/log/pods/prod_web_pod-uid-1"
    assert spec["annotations"]["pod-note"] == "x"


def _in_userns(options: api.NamespaceOption) -> None:
    options.userns_options.CopyFrom(api.UserNamespace(
        mode=api.POD, uids=[api.IDMapping(container_id=0, host_id=100000, length=65536)],
        gids=[api.IDMapping(container_id=0, host_id=100000, length=65536)]))


USERNS_MAP = IdMap(uids=[IdRange(container_id=0, host_id=100000, length=65536)],
                   gids=[IdRange(container_id=0, host_id=100000, length=65536)])
MAPPINGS = [{"containerID": 0, "hostID": 100000, "size": 65536}]


def test_a_user_namespaced_pod_is_joined_with_its_maps(rootfs: str) -> None:
    pod = pod_context(userns_path="/run/pv/pods/sb1/ns/user", idmap=USERNS_MAP)
    config = container()
    _in_userns(config.linux.security_context.namespace_options)
    spec = build(rootfs, config, pod=pod)
    linux = spec["linux"]
    assert linux["namespaces"][0] == {"type": "user", "path": "/run/pv/pods/sb1/ns/user"}
    assert linux["uidMappings"] == linux["gidMappings"] == MAPPINGS
    infra = build_infra_spec(pod_sandbox(), pod, "/run/pv/infra-rootfs", node=NODE)
    assert infra["linux"]["namespaces"] == [
        {"type": "user", "path": "/run/pv/pods/sb1/ns/user"}, *POD_NAMESPACES]
    assert infra["linux"]["uidMappings"] == MAPPINGS
    # A container asking for the node's user namespace in such a pod, or
    # for its own in a pod on the node's, is refused.
    with pytest.raises(InvalidArgument, match="its own user namespace"):
        build(rootfs, container(), pod=pod)
    with pytest.raises(InvalidArgument, match="the node's user namespace"):
        build(rootfs, config)


def test_a_pod_on_the_node_user_namespace_has_no_maps(rootfs: str) -> None:
    linux = build(rootfs)["linux"]
    assert "uidMappings" not in linux and "gidMappings" not in linux
    assert all(ns["type"] != "user" for ns in linux["namespaces"])
