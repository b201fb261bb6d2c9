"""From records to OCI specs: the glue between what a sandbox record holds
and what the spec builder (spec.py) needs.

Node facts (cgroup layout, the handler's mount options, the daemon's own
limits) are read once per worker process and handler: they do not change
while the daemon runs. What a cpuset may name does (CPU and memory
hotplug), so it is read again for every spec.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from . import configs, handlers, podns
from .monitor import Handler
from .spec import INFRA_ARGS, build_container_spec, build_infra_spec
from .spec_context import (
    CRUN_SYSTEMD_ANNOTATIONS,
    MIN_MEMORY_CRUN,
    MIN_MEMORY_RUNC,
    NodeFacts,
    PodContext,
    SpecSettings,
    bounding_caps,
    detect_node,
    own_oom_score_adj,
    with_cpusets,
)
from .spec_mounts import ensure_mount_sources


def node_facts(cgroup_manager: str, handler: str, handler_path: str,
               handler_root: str = "", settings: SpecSettings | None = None) -> NodeFacts:
    """The facts of this node and handler as they are now."""
    return with_cpusets(_detected(cgroup_manager, handler, handler_path, handler_root,
                                  settings or SpecSettings()))


def handler_facts(runtimes: handlers.Runtimes, name: str) -> tuple[Handler, NodeFacts]:
    """Handler ``name`` of the node's table, and the node facts for it."""
    handler = runtimes.handlers[name]
    return handler, node_facts(runtimes.cgroups.manager, handler.name, handler.path,
                               handler.root, runtimes.spec_settings)


@functools.cache
def _detected(cgroup_manager: str, handler: str, handler_path: str,
              handler_root: str, settings: SpecSettings) -> NodeFacts:
    probe = handlers.probe(handler, handler_path, handler_root)
    crun = "crun" in handler_path
    return detect_node(cgroup_manager, probe.mount_options,
                       MIN_MEMORY_CRUN if crun else MIN_MEMORY_RUNC, settings=settings,
                       runtime_annotations=CRUN_SYSTEMD_ANNOTATIONS
                       if crun and cgroup_manager == "systemd" else ())


@functools.cache
def _daemon_limits() -> tuple[tuple[str, ...], int]:
    return bounding_caps(), own_oom_score_adj()


def pod_context(pod: Mapping[str, Any]) -> PodContext:
    """What the containers of ``pod`` join, from its sandbox record."""
    caps, floor = _daemon_limits()
    ns = pod.get("ns") or {}
    files = pod.get("files") or {}
    infra = pod.get("infra")
    return PodContext(
        sandbox_id=pod["id"], hostname=pod.get("hostname", ""),
        cgroup_parent=pod.get("cgroup_parent", ""), netns_path=pod.get("netns_path") or None,
        ipc_ns_path=ns.get("ipc"), uts_ns_path=ns.get("uts"),
        pid_ns_path=f"/proc/{infra['pid']}/ns/pid" if infra and infra.get("pid") else None,
        shm_path=pod.get("shm"), resolv_conf=files.get("resolv_conf"),
        hosts_file=files.get("hosts"), hostname_file=files.get("hostname"),
        privileged_caps=caps, oom_score_adj_floor=floor,
        userns_path=ns.get("user"), idmap=podns.idmap_of(pod))


def container_spec(node: NodeFacts, pod: Mapping[str, Any], record: Mapping[str, Any],
                   rootfs: str, image_config: Mapping[str, Any],
                   target_pid_ns: str | None = None) -> dict[str, Any]:
    config = configs.container_config(record)
    # CRI-O creates a missing bind-mount source as a directory (its
    # absent_mount_sources_to_reject list is empty by default); so do we,
    # before the builder checks that every source exists.
    ensure_mount_sources(config)
    return build_container_spec(config, configs.sandbox_config(pod), image_config, rootfs,
                                pod_context(pod), container_id=record["id"], node=node,
                                target_pid_ns=target_pid_ns,
                                image_volumes=[v["path"] for v in record.get("image_volumes",
                                                                             [])])


def infra_spec(node: NodeFacts, pod: Mapping[str, Any], rootfs: str,
               args: tuple[str, ...] = INFRA_ARGS) -> dict[str, Any]:
    return build_infra_spec(configs.sandbox_config(pod), pod_context({**pod, "infra": None}),
                            rootfs, node=node, args=args)
