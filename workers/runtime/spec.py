"""The OCI runtime spec (config.json) of a container or of a pod's infra process.

``build_container_spec`` turns a CRI CreateContainer request (its
``ContainerConfig`` and ``PodSandboxConfig`` messages), the image's config
and what the pod sandbox set up (``PodContext``) into one OCI runtime-spec
document; ``build_infra_spec`` does the same for the pause process of a
pod that shares a PID namespace. CRI-O is the reference for every
default; the modules beside this one each hold one part and cite where
their choices come from:

    spec_process     args, env, cwd, stop signal
    spec_user        uid/gid/groups from the image's passwd and group
    spec_security    capabilities, masked and read-only paths, AppArmor, SELinux
    spec_seccomp     the seccomp filter (seccomp_default: RuntimeDefault)
    spec_mounts      system, pod and CRI mounts, their order
    spec_namespaces  which namespaces to create or join
    spec_resources   cgroupsPath and cgroup limits
    spec_devices     device nodes and the device cgroup
    spec_cdi         CDI devices: nodes, env, mounts and hooks from CDI specs
    spec_sysctl      namespaced sysctls

Invariants:
    - The builders only read: the rootfs's /etc/passwd and /etc/group (or
      a ``UserDb`` given instead), the stat of mount sources and devices,
      /proc/self/mountinfo for propagation checks. Creating missing mount
      sources, as CRI-O does, is ``spec_mounts.ensure_mount_sources``,
      which the caller runs first.
    - A request the spec cannot honour is refused with a typed BusError
      (INVALID_ARGUMENT, FAILED_PRECONDITION, UNIMPLEMENTED) whose message
      names the field or path; nothing is silently dropped except what the
      module docstrings list (selinux_relabel, Mount.mount_options, image
      Volumes, hugepage limits without a hugetlb controller).
    - The same inputs give the same document: lists are in a fixed order,
      so a retried create writes an identical config.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import InvalidArgument
from . import (
    spec_cdi,
    spec_devices,
    spec_mounts,
    spec_process,
    spec_resources,
    spec_seccomp,
    spec_security,
)
from .spec_context import NodeFacts, PodContext, bounding_caps, detect_node, own_oom_score_adj
from .spec_namespaces import (
    check_same_userns,
    container_namespaces,
    id_mappings,
    infra_namespaces,
)
from .spec_sysctl import pod_sysctls
from .spec_user import UserDb, oci_user

__all__ = ["INFRA_ARGS", "OCI_VERSION", "NodeFacts", "PodContext", "bounding_caps",
           "build_container_spec", "build_infra_spec", "detect_node", "own_oom_score_adj"]

OCI_VERSION = "1.0.2"   # what runc 1.1 and crun 1.8 implement

# catatonit's pause mode: no child, just reap and wait for a signal.
INFRA_ARGS = ("/catatonit", "-P")

# CRI-O's PodInfraOOMAdj and PodInfraCPUshares (server/sandbox_run.go):
# the infra process is the last thing the OOM killer should pick, and it
# needs next to no CPU.
INFRA_OOM_SCORE_ADJ = -998
INFRA_CPU_SHARES = 2

# Annotation keys that node agents and monitoring read from the OCI spec
# (containerd's internal/cri/annotations, shared by CRI-O's consumers).
A_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
A_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
A_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
A_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
A_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
A_SANDBOX_LOG_DIR = "io.kubernetes.cri.sandbox-log-directory"
A_CONTAINER_NAME = "io.kubernetes.cri.container-name"
A_IMAGE_NAME = "io.kubernetes.cri.image-name"


def _image_section(image_config: Mapping[str, Any]) -> Mapping[str, Any]:
    # Either the whole OCI image config document or just its "config" part.
    inner = image_config.get("config")
    return inner if isinstance(inner, Mapping) else image_config


def _sandbox_annotations(sandbox_config: api.PodSandboxConfig,
                         pod: PodContext) -> dict[str, str]:
    meta = sandbox_config.metadata
    return {A_SANDBOX_ID: pod.sandbox_id,
            A_SANDBOX_NAME: meta.name,
            A_SANDBOX_NAMESPACE: meta.namespace,
            A_SANDBOX_UID: meta.uid}


def _rlimits(node: NodeFacts) -> list[dict[str, Any]]:
    return [{"type": "RLIMIT_NOFILE", "hard": node.nofile, "soft": node.nofile}]


def build_container_spec(container_config: api.ContainerConfig,
                         sandbox_config: api.PodSandboxConfig,
                         image_config: Mapping[str, Any], rootfs: str, pod: PodContext, *,
                         container_id: str, node: NodeFacts | None = None,
                         users: UserDb | None = None, target_pid_ns: str | None = None,
                         mountinfo: str | None = None, dev_root: str = "/dev",
                         image_volumes: Sequence[str] = ()) -> dict[str, Any]:
    """The config.json of container ``container_id`` of ``pod``.

    ``image_volumes`` are the mounted images of the config's image mounts,
    in their order.

    ``users`` defaults to the rootfs's own passwd and group files, read
    safely; ``target_pid_ns`` is the PID namespace of the container named
    by ``namespace_options.target_id``, for debug containers;
    ``mountinfo`` and ``dev_root`` exist for tests.
    """
    node = node or NodeFacts()
    image = _image_section(image_config)
    name = container_config.metadata.name
    if not name:
        raise InvalidArgument("container metadata: name is empty")
    sc = container_config.linux.security_context
    privileged = sc.privileged
    if privileged and not sandbox_config.linux.security_context.privileged:
        # CRI-O SetPrivileged: a privileged container needs a privileged pod.
        raise InvalidArgument(f"container {name} is privileged but its pod sandbox is not")
    readonly = sc.readonly_rootfs
    resources = container_config.linux.resources
    image_user = image.get("User") or ""
    if not isinstance(image_user, str):
        raise InvalidArgument("image config User: expected a string")

    if users is None:
        users = UserDb.from_rootfs(rootfs)
    caps = spec_security.capabilities(sc.capabilities, privileged, pod.privileged_caps)
    apparmor = spec_security.apparmor_profile(sc, privileged, node.apparmor)
    spec_security.check_selinux(sc.selinux_options, node.selinux, "container")
    check_same_userns(sc.namespace_options, pod.idmap, f"container {name}")
    process: dict[str, Any] = {
        "terminal": container_config.tty,
        "user": oci_user(sc, image_user, users),
        "args": spec_process.process_args(container_config, image),
        "env": spec_process.process_env(container_config, image, pod.hostname),
        "cwd": spec_process.process_cwd(container_config, image),
        "capabilities": caps,
        "noNewPrivileges": sc.no_new_privs,
        "rlimits": _rlimits(node),
    }
    if container_config.linux.HasField("resources"):
        # Without resources the kubelet asked for nothing: the container
        # inherits conmon's score, as with CRI-O.
        process["oomScoreAdj"] = spec_resources.oom_score_adj(resources, pod.oom_score_adj_floor)

    requested, rootfs_propagation = spec_mounts.cri_mounts(container_config.mounts, node,
                                                           mountinfo, image_volumes)
    defaults = [*spec_mounts.system_mounts(privileged), spec_mounts.shm_mount(pod),
                *spec_mounts.pod_file_mounts(pod, readonly)]
    nodes, rules = spec_devices.devices(container_config.devices, privileged, dev_root)
    linux: dict[str, Any] = {
        "namespaces": container_namespaces(sc.namespace_options, pod, node, privileged,
                                           target_pid_ns),
        "cgroupsPath": spec_resources.cgroups_path(pod.cgroup_parent, container_id, node),
        "resources": {**spec_resources.linux_resources(resources, node), "devices": rules},
        "devices": nodes,
        "sysctl": pod_sysctls(dict(sandbox_config.linux.sysctls),
                              host_network=pod.netns_path is None,
                              host_ipc=pod.ipc_ns_path is None),
        "maskedPaths": spec_security.masked_paths(sc, privileged),
        "readonlyPaths": spec_security.readonly_paths(sc, privileged),
        **id_mappings(pod),
    }
    if rootfs_propagation:
        linux["rootfsPropagation"] = rootfs_propagation
    seccomp = spec_seccomp.seccomp(sc, frozenset(caps["bounding"]), privileged,
                                   node.settings.seccomp_default_when_empty)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    if apparmor is not None:
        process["apparmorProfile"] = apparmor

    image_spec = container_config.image
    annotations = {
        **container_config.annotations,
        **_sandbox_annotations(sandbox_config, pod),
        A_CONTAINER_TYPE: "container",
        A_CONTAINER_NAME: name,
        A_IMAGE_NAME: image_spec.user_specified_image or image_spec.image,
        spec_process.STOP_SIGNAL_ANNOTATION: spec_process.stop_signal(container_config, image),
        **dict(node.runtime_annotations),
    }
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": readonly},
        "mounts": spec_mounts.merge(defaults, requested),
        "annotations": annotations,
        "linux": linux,
    }
    if pod.uts_ns_path and pod.hostname:
        spec["hostname"] = pod.hostname
    spec_cdi.apply(spec, spec_cdi.resolve(spec_cdi.requested(container_config),
                                          node.settings.cdi_spec_dirs))
    return spec


def build_infra_spec(sandbox_config: api.PodSandboxConfig, pod: PodContext, rootfs: str, *,
                     node: NodeFacts | None = None,
                     args: tuple[str, ...] = INFRA_ARGS) -> dict[str, Any]:
    """The config.json of the pod's infra (pause) process.

    It exists only to hold the pod's PID namespace, so it gets the least
    a process can have: a read-only rootfs, no capabilities, no new
    privileges, the system mounts and nothing of the pod's files. It runs
    as the sandbox's run_as_user/run_as_group when set (containerd does
    the same; CRI-O runs it as root), numerically, as the built-in rootfs
    has no passwd. ``args`` is the pause command, for a configured
    ``pause_image``.
    """
    node = node or NodeFacts()
    if not args:
        raise InvalidArgument("the pause command is empty")
    pod_sc = spec_security.pod_security(sandbox_config.linux.security_context)
    apparmor = spec_security.apparmor_profile(pod_sc, pod_sc.privileged, node.apparmor)
    spec_security.check_selinux(pod_sc.selinux_options, node.selinux, "pod sandbox")
    process: dict[str, Any] = {
        "terminal": False,
        "user": oci_user(sandbox_config.linux.security_context, "", UserDb()),
        "args": list(args),
        "env": [f"PATH={spec_process.DEFAULT_PATH}"],
        "cwd": "/",
        "capabilities": {"bounding": [], "effective": [], "permitted": [], "inheritable": [],
                         "ambient": []},
        "noNewPrivileges": True,
        "rlimits": _rlimits(node),
        "oomScoreAdj": max(INFRA_OOM_SCORE_ADJ, pod.oom_score_adj_floor),
    }
    linux: dict[str, Any] = {
        "namespaces": infra_namespaces(pod, node),
        "cgroupsPath": spec_resources.cgroups_path(pod.cgroup_parent, pod.sandbox_id, node),
        "resources": {"cpu": {"shares": INFRA_CPU_SHARES},
                      "devices": list(spec_devices.DEFAULT_RULES)},
        "devices": [],
        "sysctl": pod_sysctls(dict(sandbox_config.linux.sysctls),
                              host_network=pod.netns_path is None,
                              host_ipc=pod.ipc_ns_path is None),
        "maskedPaths": list(spec_security.DEFAULT_MASKED_PATHS),
        "readonlyPaths": list(spec_security.DEFAULT_READONLY_PATHS),
        **id_mappings(pod),
    }
    # The pod's own profiles confine its infra process (it has no capabilities).
    seccomp = spec_seccomp.seccomp(pod_sc, frozenset(), pod_sc.privileged,
                                   node.settings.seccomp_default_when_empty)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    if apparmor is not None:
        process["apparmorProfile"] = apparmor
    annotations = {
        **sandbox_config.annotations,
        **_sandbox_annotations(sandbox_config, pod),
        A_CONTAINER_TYPE: "sandbox",
        A_SANDBOX_LOG_DIR: sandbox_config.log_directory,
        **dict(node.runtime_annotations),
    }
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": True},
        "mounts": spec_mounts.system_mounts(privileged=False),
        "annotations": annotations,
        "linux": linux,
    }
    if pod.uts_ns_path and pod.hostname:
        spec["hostname"] = pod.hostname
    return spec
