"""The ops of the runtime pool: node answers, pod sandboxes, containers.

Each op is declared once, with its argument and result types
(proto/contract.py). The CRI messages travel whole, as serialized protobuf
in ``bytes`` fields, both ways: a pod's or container's config into the
reserve ops, and every CRI status and list item out of the status and list
ops, built in the runtime pool and only parsed by the supervisor
(``api.PodSandboxStatus.FromString(result.status)``).

Ids: the create ops take the full 64-hex id the supervisor picked; every
other op takes a sandbox's or container's id or a unique prefix of it, as
the kubelet may send, and answers the full one. Stops and removals of an
absent object succeed with ``found`` false (CRI idempotence).
"""

from __future__ import annotations

from typing import Any

from .contract import Empty, Op, Record
from .idmap import IdMap
from .stats import ContainerSamples, PodSamples, StatsQuery
from .stream_ops import AttachPlan, ExecPlan, PortForwardPlan, Streams

# ---- node answers ------------------------------------------------------------


class VersionInfo(Record, frozen=True, kw_only=True):
    """The CRI VersionResponse's fields."""

    version: str
    """The CRI version field: the version of the runtime API spoken."""
    runtime_name: str
    runtime_version: str
    runtime_api_version: str


class HandlerProbe(Record, frozen=True, kw_only=True):
    """What probing one OCI runtime handler (runc, crun) found."""

    name: str
    path: str
    ok: bool
    """Its binary ran ``--version`` successfully."""
    version: str
    message: str
    """Why it is not ok; "" when it is."""
    recursive_read_only_mounts: bool
    user_namespaces: bool = False
    """Pods of this handler may have their own user namespace (mode POD):
    the host makes idmapped mounts under podvisor's root and its dirs are
    traversable by mapped ids."""


class RuntimeStatus(Record, frozen=True, kw_only=True):
    """The RuntimeReady condition and the handlers that work."""

    runtime_ready: bool
    """The default handler works."""
    reason: str
    message: str
    default_runtime: str
    handlers: list[HandlerProbe]
    """The handlers that work, by name."""
    probes: list[HandlerProbe]
    """Every configured handler, working or not (for verbose Status)."""


class RuntimeConfig(Record, frozen=True, kw_only=True):
    cgroup_driver: str
    """"systemd" or "cgroupfs", fixed for the daemon's life."""
    cgroup_hierarchy: str = ""
    """"v1", "hybrid" or "v2": the cgroup filesystems of this host."""


# ---- shared shapes ---------------------------------------------------------------


class Ref(Record, frozen=True, kw_only=True):
    """A pod sandbox or a container, by its id or a unique prefix of it."""

    id: str


class Found(Record, frozen=True, kw_only=True):
    """The answer of an op that finds an absent object fine."""

    found: bool
    id: str = ""
    """The full id; "" when not found."""


class StatusQuery(Record, frozen=True, kw_only=True):
    id: str
    """The id or a unique prefix; NOT_FOUND when none matches."""
    verbose: bool
    """Also answer ``info``, the CRI's free-form verbose map."""


# ---- pod sandboxes -----------------------------------------------------------------


class SandboxReserve(Record, frozen=True, kw_only=True):
    """Reserve the pod's name and write its ``creating`` record. Again with
    the same id, the same answer; a name held by another pod is
    ALREADY_EXISTS. What can be refused (hostname, log directory,
    namespace modes, metadata) is refused here, before anything exists."""

    id: str
    config: bytes
    """The CRI PodSandboxConfig, serialized."""
    runtime_handler: str
    """The CRI runtime handler; "" for the node's default."""


class SandboxReserved(Record, frozen=True, kw_only=True):
    id: str
    name: str
    """The pod's unique name (proto/naming.py)."""
    runtime_handler: str
    """The handler resolved: never ""."""
    host_network: bool
    """The pod shares the node's network namespace: no CNI."""
    pause_image: str
    """The image whose rootfs the pod's infra process runs from, for the
    supervisor to pull and mount before ``sandbox_start``; "" when the pod
    needs no infra (it does not share a PID namespace) or none is set."""
    userns_path: str = ""
    """The pod's pinned user namespace (mode POD), in which the net pool
    must create the pod's network namespace; "" for the node's."""
    idmap: IdMap | None = None
    """Its maps, for the storage pool to idmap the pause image's rootfs."""


class InfraImage(Record, frozen=True, kw_only=True):
    """The pause image's mounted rootfs and the command to run in it."""

    rootfs: str
    args: list[str]


class SandboxPrepare(Record, frozen=True, kw_only=True):
    """The part of a pod's start that needs no addresses: its namespaces,
    cgroup and infra, the infra in the network namespace the net pool made
    while the CNI chain runs. The sandbox stays ``creating``, and
    ``sandbox_start`` then does the rest (with ``netns_path`` and
    ``infra_image`` ignored). A sandbox prepared already, or no longer
    ``creating``, is left as it is."""

    id: str
    netns_path: str | None = None
    infra_image: InfraImage | None = None


class SandboxStart(Record, frozen=True, kw_only=True):
    """Set up the pod's namespaces, files, cgroup and infra, and mark it
    ready; of a sandbox prepared already (``SandboxPrepare``) only the files
    and the addresses are left to do. A sandbox no longer ``creating`` is
    left as it is."""

    id: str
    netns_path: str | None = None
    """The network namespace the net pool made; None for host network."""
    ips: list[str]
    """The pod's addresses, first the primary (for the hosts file and the
    status)."""
    infra_image: InfraImage | None = None
    """None: the infra runs catatonit from the node (or there is none)."""


class SandboxStopped(Record, frozen=True, kw_only=True):
    found: bool
    id: str = ""
    stopped: bool = False
    """This call moved it to not ready (false when it was already)."""


class SandboxStatus(Record, frozen=True, kw_only=True):
    status: bytes
    """The CRI PodSandboxStatus, serialized."""
    containers: list[bytes]
    """The CRI ContainerStatus of each of its containers, serialized
    (creating ones are not the kubelet's to see)."""
    info: dict[str, str]
    """The CRI verbose info; empty unless asked."""


class SandboxStarted(Record, frozen=True, kw_only=True):
    """The pod's status right after its start, as ``SandboxStatus`` answers
    it, info too: the supervisor's status cache keeps it for plain and
    verbose reads (supervisor/status_cache.py). Empty fields: nothing to keep."""

    status: bytes = b""
    containers: list[bytes] = []
    info: dict[str, str] = {}


class SandboxListQuery(Record, frozen=True, kw_only=True):
    filter: bytes = b""
    """The CRI PodSandboxFilter, serialized; empty for all."""


class SandboxList(Record, frozen=True, kw_only=True):
    items: list[bytes]
    """Each a CRI PodSandbox, serialized; pods being created are left out."""


# ---- containers ------------------------------------------------------------------------


class ImageRef(Record, frozen=True, kw_only=True):
    """The image a container is created from, as the image pool resolved it."""

    id: str
    repo_tags: list[str]
    repo_digests: list[str]


class ContainerReserve(Record, frozen=True, kw_only=True):
    """Reserve the container's name in a ready pod and write its
    ``creating`` record (FAILED_PRECONDITION if the pod is not ready).
    Again with the same id, the same answer. A bad log path or image is
    refused here, before the supervisor unpacks and mounts anything."""

    id: str
    sandbox_id: str
    """The pod's id or a unique prefix of it."""
    config: bytes
    """The CRI ContainerConfig, serialized."""
    image: ImageRef


class ContainerReserved(Record, frozen=True, kw_only=True):
    id: str
    name: str
    """The container's unique name (proto/naming.py)."""
    sandbox_id: str
    """The pod's full id."""
    idmap: IdMap | None = None
    """The pod's user namespace maps (mode POD), for the storage pool to
    idmap the rootfs and image volumes with; None for the node's."""


class ImageVolume(Record, frozen=True, kw_only=True):
    """An image mounted for a CRI ``Mount.image``, in the order the config
    lists its image mounts."""

    path: str
    """The image's root filesystem as the storage pool mounted it."""
    image_id: str
    """The image's id, which ContainerStatus reports as the mount's image_ref."""


class ContainerCreate(Record, frozen=True, kw_only=True):
    """Write the OCI bundle and have the monitor run ``<handler> create``.
    A container no longer ``creating`` is left as it is."""

    id: str
    rootfs: str
    """The mounted root filesystem the storage pool made."""
    image_volumes: list[ImageVolume] = []
    """One per CRI mount with an image, in their order."""
    # Opaque JSON: the OCI image config document as the image pool stored
    # it; an external format the spec builder reads a few keys of.
    image_config: dict[str, Any]


class ContainerStarted(Record, frozen=True, kw_only=True):
    id: str
    """The full id."""
    status: bytes = b""
    """The CRI ContainerStatus right after the start, serialized: the
    supervisor's status cache keeps it (supervisor/status_cache.py)."""
    info: dict[str, str] = {}
    """Its verbose info then, kept for verbose reads."""


class ContainerStop(Record, frozen=True, kw_only=True):
    """The stop signal, then SIGKILL after ``timeout`` seconds (0: at once).
    Stopping a stopped or absent container succeeds."""

    id: str
    timeout: int


class ContainerStopped(Record, frozen=True, kw_only=True):
    found: bool
    id: str = ""
    sandbox_id: str = ""
    stopped: bool = False
    """It was running (or created) and this call stopped it."""


class ContainerRemoved(Record, frozen=True, kw_only=True):
    found: bool
    id: str = ""
    sandbox_id: str = ""


class ContainerStatus(Record, frozen=True, kw_only=True):
    status: bytes
    """The CRI ContainerStatus, serialized."""
    info: dict[str, str]
    """The CRI verbose info; empty unless asked."""


class ContainerListQuery(Record, frozen=True, kw_only=True):
    filter: bytes = b""
    """The CRI ContainerFilter, serialized; empty for all."""
    sandbox_id: str = ""
    """Only the containers of this pod (its full id); "" for all."""
    all: bool = False
    """Include those still being created (for a pod's removal)."""


class ContainerList(Record, frozen=True, kw_only=True):
    items: list[bytes]
    """Each a CRI Container, serialized."""


class ExecSync(Record, frozen=True, kw_only=True):
    id: str
    cmd: list[str]
    """The program and its arguments; neither empty nor holding a NUL."""
    timeout: int
    """Seconds before the command is killed (DEADLINE_EXCEEDED); 0: none."""


class ExecResult(Record, frozen=True, kw_only=True):
    stdout: bytes
    stderr: bytes
    exit_code: int


class ContainerUpdate(Record, frozen=True, kw_only=True):
    """New resources for a container: written to its cgroup by the OCI
    runtime while it runs (or is created), and to its record either way."""

    id: str
    resources: bytes
    """The CRI LinuxContainerResources, serialized."""


class SandboxUpdate(Record, frozen=True, kw_only=True):
    """A pod's new resources, after an in-place resize: recorded, and
    written to the pod cgroup when podvisor made it (the kubelet writes
    its own)."""

    id: str
    resources: bytes
    """The CRI LinuxContainerResources of the whole pod, serialized."""
    overhead: bytes
    """The pod overhead's LinuxContainerResources, serialized."""


class StreamRequest(Record, frozen=True, kw_only=True):
    """Exec or Attach, before a URL is issued: the container and the
    streams asked for (proto/stream_ops.py has what comes back)."""

    id: str
    streams: Streams
    cmd: list[str] = []
    """Exec's command; empty for Attach."""


# ---- start-up and events -----------------------------------------------------------------


class Reconciled(Record, frozen=True, kw_only=True):
    """The ids that live on after the start-up reconcile, for the net and
    storage pools to keep, and what it removed."""

    sandboxes: list[str]
    containers: list[str]
    removed_sandboxes: list[str]
    removed_containers: list[str]
    removed_cgroups: list[str]


class ChangesSince(Record, frozen=True, kw_only=True):
    """Long poll of the change feed (workers/runtime/changes.py) for changes
    newer than ``cursor``."""

    cursor: int
    """A change's stamp in ns, as the last answer gave it."""
    wait: float
    """Seconds to wait for one, at most (bounded by the deadline too)."""
    recent: list[str]
    """Keys of the changes already answered within the look-back."""


class Changes(Record, frozen=True, kw_only=True):
    cursor: int
    keys: list[str]
    """Keys of every change this answer covers, the ones that produced no
    event included (an exit of a pod's infra container)."""
    events: list[bytes]
    """CRI ContainerEventResponses, serialized, oldest first: each with the
    pod's status and its containers' statuses as they are now."""


VERSION = Op("runtime.version", Empty, VersionInfo, read_only=True)
STATUS = Op("runtime.status", Empty, RuntimeStatus, read_only=True)
RUNTIME_CONFIG = Op("runtime.runtime_config", Empty, RuntimeConfig, read_only=True)
SANDBOX_RESERVE = Op("runtime.sandbox_reserve", SandboxReserve, SandboxReserved,
                     idempotent=True)
SANDBOX_PREPARE = Op("runtime.sandbox_prepare", SandboxPrepare, Empty)
SANDBOX_START = Op("runtime.sandbox_start", SandboxStart, SandboxStarted)
SANDBOX_STOP_CONTAINERS = Op("runtime.sandbox_stop_containers", Ref, Found)
SANDBOX_STOP = Op("runtime.sandbox_stop", Ref, SandboxStopped, idempotent=True)
SANDBOX_REMOVE = Op("runtime.sandbox_remove", Ref, Found, idempotent=True)
SANDBOX_STATUS = Op("runtime.sandbox_status", StatusQuery, SandboxStatus, read_only=True)
SANDBOX_LIST = Op("runtime.sandbox_list", SandboxListQuery, SandboxList, read_only=True)
CONTAINER_RESERVE = Op("runtime.container_reserve", ContainerReserve, ContainerReserved,
                       idempotent=True)
CONTAINER_CREATE = Op("runtime.container_create", ContainerCreate, Empty)
CONTAINER_START = Op("runtime.container_start", Ref, ContainerStarted)
CONTAINER_STOP = Op("runtime.container_stop", ContainerStop, ContainerStopped, waits=True)
CONTAINER_REMOVE = Op("runtime.container_remove", Ref, ContainerRemoved, idempotent=True)
CONTAINER_STATUS = Op("runtime.container_status", StatusQuery, ContainerStatus,
                      read_only=True)
CONTAINER_LIST = Op("runtime.container_list", ContainerListQuery, ContainerList,
                    read_only=True)
CONTAINER_EXEC_SYNC = Op("runtime.container_exec_sync", ExecSync, ExecResult)
CONTAINER_REOPEN_LOG = Op("runtime.container_reopen_log", Ref, Empty)
CONTAINER_UPDATE = Op("runtime.container_update", ContainerUpdate, Empty)
SANDBOX_UPDATE = Op("runtime.sandbox_update", SandboxUpdate, Empty)
EXEC_PLAN = Op("runtime.exec_plan", StreamRequest, ExecPlan, read_only=True)
ATTACH_PLAN = Op("runtime.attach_plan", StreamRequest, AttachPlan, read_only=True)
PORT_FORWARD_PLAN = Op("runtime.port_forward_plan", Ref, PortForwardPlan, read_only=True)
CONTAINER_STATS = Op("runtime.container_stats", StatsQuery, ContainerSamples, read_only=True)
SANDBOX_STATS = Op("runtime.sandbox_stats", StatsQuery, PodSamples, read_only=True)
RECONCILE = Op("runtime.reconcile", Empty, Reconciled)
CHANGES_SINCE = Op("runtime.changes_since", ChangesSince, Changes, read_only=True)

OPS = (
    VERSION, STATUS, RUNTIME_CONFIG, SANDBOX_RESERVE, SANDBOX_PREPARE, SANDBOX_START,
    SANDBOX_STOP_CONTAINERS,
    SANDBOX_STOP, SANDBOX_REMOVE, SANDBOX_STATUS, SANDBOX_LIST, CONTAINER_RESERVE,
    CONTAINER_CREATE, CONTAINER_START, CONTAINER_STOP, CONTAINER_REMOVE, CONTAINER_STATUS,
    CONTAINER_LIST, CONTAINER_EXEC_SYNC, CONTAINER_REOPEN_LOG, CONTAINER_UPDATE, SANDBOX_UPDATE,
    EXEC_PLAN, ATTACH_PLAN, PORT_FORWARD_PLAN, CONTAINER_STATS, SANDBOX_STATS, RECONCILE,
    CHANGES_SINCE,
)
