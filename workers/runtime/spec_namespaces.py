"""Which namespaces a container or infra process creates, and which it joins.

The pod's namespaces are pinned files made when the sandbox ran
(``PodContext``); a path there means "join", ``None`` means the host's, so
no entry at all. On top of that the container's own
``NamespaceOption`` can only say NODE (stay on the host's) or, for PID,
CONTAINER (a fresh one) and TARGET (another container's, for ephemeral
debug containers), as CRI-O's ``SpecAddNamespaces``:

- pid: POD joins the pod's shared namespace (the infra process's), and is
  FAILED_PRECONDITION when the pod has none; CONTAINER is new; NODE is
  the host's; TARGET joins ``target_pid_ns``;
- network, ipc: the pod's unless the container says NODE;
- uts: the pod's (a host-UTS pod leaves it out, and then no hostname may
  be set: the runtime refuses a hostname without a private UTS namespace);
- mount: always new;
- cgroup: new on cgroup v2 for unprivileged containers (CRI-O
  ``setupCgroupNamespace``), so /sys/fs/cgroup shows only their own tree.
"""

from __future__ import annotations

from ...proto import api_pb2 as api
from ...proto.errors import FailedPrecondition, InvalidArgument
from .spec_context import NodeFacts, PodContext

Namespace = dict[str, str]


def _mode(value: int, field: str) -> int:
    # proto3 enums are open: a number from a newer cri-api parses, and
    # guessing what it means could join the wrong namespace.
    if value not in api.NamespaceMode.values():
        names = ", ".join(api.NamespaceMode.keys())
        raise InvalidArgument(f"namespace_options.{field}: unknown value {value} "
                              f"(expected one of {names})")
    return value


def _join(kind: str, path: str | None) -> list[Namespace]:
    return [{"type": kind, "path": path}] if path else []


def container_namespaces(options: api.NamespaceOption, pod: PodContext, node: NodeFacts,
                         privileged: bool, target_pid_ns: str | None = None) -> list[Namespace]:
    namespaces: list[Namespace] = []
    pid = _mode(options.pid, "pid")
    if pid == api.POD:
        if not pod.pid_ns_path:
            raise FailedPrecondition("the container asks for the pod's PID namespace, but the pod "
                                     "sandbox was not created with a shared PID namespace")
        namespaces += _join("pid", pod.pid_ns_path)
    elif pid == api.CONTAINER:
        namespaces.append({"type": "pid"})
    elif pid == api.TARGET:
        if not target_pid_ns:
            raise InvalidArgument("the container asks for the PID namespace of target "
                                  f"{options.target_id!r}, which was not found")
        namespaces += _join("pid", target_pid_ns)
    if _mode(options.network, "network") != api.NODE:
        namespaces += _join("network", pod.netns_path)
    if _mode(options.ipc, "ipc") != api.NODE:
        namespaces += _join("ipc", pod.ipc_ns_path)
    namespaces += _join("uts", pod.uts_ns_path)
    namespaces.append({"type": "mount"})
    if node.cgroup_v2 and not privileged:
        namespaces.append({"type": "cgroup"})
    return namespaces


def infra_namespaces(pod: PodContext, node: NodeFacts) -> list[Namespace]:
    """The infra process creates the pod's PID namespace and joins the rest."""
    namespaces: list[Namespace] = [{"type": "pid"}]
    namespaces += _join("network", pod.netns_path)
    namespaces += _join("ipc", pod.ipc_ns_path)
    namespaces += _join("uts", pod.uts_ns_path)
    namespaces.append({"type": "mount"})
    if node.cgroup_v2:
        namespaces.append({"type": "cgroup"})
    return namespaces
