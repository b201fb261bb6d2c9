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
  ``setupCgroupNamespace``), so /sys/fs/cgroup shows only their own tree;
- user: ``userns_options`` is checked (``pod_idmap``), never ignored:
  NODE (or none) is the host's; POD joins the pod's pinned user namespace
  (``PodContext.userns_path``) and repeats its maps in the spec, as runc
  wants them to find the host ids of root; exactly one uid and one gid
  range, mapping container id 0, neither end reaching 2^32. CONTAINER and
  TARGET, a bad mapping, or a container asking for other maps than its
  pod's, are INVALID_ARGUMENT.
"""

from __future__ import annotations

from ...proto import api_pb2 as api
from ...proto.errors import FailedPrecondition, InvalidArgument
from ...proto.idmap import IdMap, IdRange
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


# The highest id a mapping may reach (uid_t is 32 bits; -1 is "no id").
ID_LIMIT = 1 << 32


def pod_idmap(options: api.NamespaceOption, where: str) -> IdMap | None:
    """The user namespace maps ``options`` ask for: None for the node's
    (NODE, or nothing said); refuse what podvisor cannot honour (see the
    module docstring)."""
    if not options.HasField("userns_options"):
        return None
    userns = options.userns_options
    mode = _mode(userns.mode, "userns_options.mode")
    if mode == api.NODE:
        if userns.uids or userns.gids:
            raise InvalidArgument(f"{where}: userns_options mode NODE takes no id mappings")
        return None
    if mode != api.POD:
        raise InvalidArgument(f"{where}: userns_options mode {api.NamespaceMode.Name(mode)} is "
                              "not supported; a user namespace is the pod's (POD) or the "
                              "node's (NODE)")
    maps: dict[str, list[IdRange]] = {}
    for field, found in (("uids", userns.uids), ("gids", userns.gids)):
        if len(found) != 1:
            raise InvalidArgument(f"{where}: userns_options.{field} must hold exactly one "
                                  f"mapping, got {len(found)}")
        [mapping] = found
        if mapping.container_id != 0:
            raise InvalidArgument(f"{where}: userns_options.{field} must map container id 0, "
                                  f"not start at {mapping.container_id}")
        if (mapping.length == 0 or mapping.host_id + mapping.length >= ID_LIMIT
                or mapping.container_id + mapping.length >= ID_LIMIT):
            raise InvalidArgument(f"{where}: userns_options.{field} maps {mapping.length} ids "
                                  f"from host id {mapping.host_id}, outside the 32-bit range")
        maps[field] = [IdRange(container_id=mapping.container_id, host_id=mapping.host_id,
                               length=mapping.length)]
    return IdMap(uids=maps["uids"], gids=maps["gids"])


def check_same_userns(options: api.NamespaceOption, pod: IdMap | None, where: str) -> None:
    """A container's user namespace is its pod's: it must ask for the
    same maps (or both for the node's)."""
    own = pod_idmap(options, where)
    if own != pod:
        said = "the node's" if own is None else "other id mappings"
        has = "the node's user namespace" if pod is None else "its own user namespace"
        raise InvalidArgument(f"{where}: userns_options asks for {said}, but its pod sandbox "
                              f"runs in {has}; a container must ask for its pod's")


def id_mappings(pod: PodContext) -> dict[str, list[dict[str, int]]]:
    """The spec's ``uidMappings`` and ``gidMappings`` of a pod with its own
    user namespace, joined by path. crun 1.8 needs no maps then; runc 1.1
    refuses the spec without them ("User namespaces enabled, but no uid
    mappings found": it reads them for the host ids of the container's
    root), so they are always given."""
    if pod.idmap is None:
        return {}
    return {key: [{"containerID": r.container_id, "hostID": r.host_id, "size": r.length}
                  for r in ranges]
            for key, ranges in (("uidMappings", pod.idmap.uids),
                                ("gidMappings", pod.idmap.gids))}


def _join(kind: str, path: str | None) -> list[Namespace]:
    return [{"type": kind, "path": path}] if path else []


def container_namespaces(options: api.NamespaceOption, pod: PodContext, node: NodeFacts,
                         privileged: bool, target_pid_ns: str | None = None) -> list[Namespace]:
    namespaces: list[Namespace] = _join("user", pod.userns_path)
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
    namespaces: list[Namespace] = [*_join("user", pod.userns_path), {"type": "pid"}]
    namespaces += _join("network", pod.netns_path)
    namespaces += _join("ipc", pod.ipc_ns_path)
    namespaces += _join("uts", pod.uts_ns_path)
    namespaces.append({"type": "mount"})
    if node.cgroup_v2:
        namespaces.append({"type": "cgroup"})
    return namespaces
