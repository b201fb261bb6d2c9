"""The ops of the net pool: pod networks.

Each op is declared once, with its argument and result types
(proto/contract.py). Fields that come from the CRI keep its snake_case
names. A pod is named by its sandbox id: 1-128 of
``[A-Za-z0-9_.-]``, not starting with ``.``, ``_`` or ``-`` (it is the CNI
container id and names files of the pool).
"""

from __future__ import annotations

from .contract import Empty, Op, Record
from .stats import NetworkQuery, NetworkSamples


class NetworkStatus(Record, frozen=True, kw_only=True):
    """Whether pods can get a network: CRI Status's NetworkReady condition.

    The network is ready when ``network_dir`` holds a valid config and, for
    CNI 1.1.0, every plugin of it answers STATUS without an error.
    """

    network_ready: bool
    reason: str
    """"" when ready, else "NetworkPluginNotReady"."""
    message: str
    """Why it is not ready ("" when it is)."""
    config_file: str
    """The config in use; "" when there is none."""
    network_name: str
    """That config's ``name``; "" when there is none."""
    invalid_configs: dict[str, str]
    """Config files skipped, by path: why each one is unusable."""


class PortMapping(Record, frozen=True, kw_only=True):
    """A CRI ``PortMapping``; absent fields take proto3's defaults."""

    protocol: str = "TCP"
    """The CRI ``Protocol`` enum's name: "TCP", "UDP" or "SCTP"."""
    container_port: int = 0
    """1-65535."""
    host_port: int = 0
    """0-65535; 0 means no host port, and the mapping is skipped."""
    host_ip: str = ""
    """The host address to bind; "" for all of them."""


class DnsConfig(Record, frozen=True, kw_only=True):
    """A CRI ``DNSConfig``, handed to plugins as the ``dns`` capability."""

    servers: list[str] = []
    """IP addresses."""
    searches: list[str] = []
    options: list[str] = []


class SetupPod(Record, frozen=True, kw_only=True):
    """Give a pod its network: a namespace and the CNI chain's ADD.

    Idempotent: a second setup of a ready pod answers what the first did;
    one that finds a half-done setup tears it down and starts over. A
    hostNetwork pod gets no namespace and no CNI, only the node's IPs.
    """

    pod_id: str
    name: str
    namespace: str
    uid: str
    """``PodSandboxMetadata``; they become CNI_ARGS ``K8S_POD_*``, so none
    may hold ``;``, ``=`` or whitespace."""
    port_mappings: list[PortMapping]
    """The ``portMappings`` capability (those with a host port)."""
    dns: DnsConfig | None = None
    """The ``dns`` capability; None when the pod has no DNS config."""
    host_network: bool
    cgroup_parent: str
    """The ``cgroupPath`` capability; "" for none."""
    userns_path: str = ""
    """The pod's pinned user namespace: the network namespace is created
    inside it, so that it owns it (runc in the pod's user namespace can
    join only namespaces it owns). "" for the node's."""


class PodNetwork(Record, frozen=True, kw_only=True):
    """A pod's network, set up."""

    pod_id: str
    host_network: bool
    netns_path: str
    """The pod's network namespace, bind-mounted; "" for a hostNetwork pod."""
    ips: list[str]
    """Plain addresses, IPv4 first; the first is the pod's primary IP. For a
    hostNetwork pod, the node's."""
    network_name: str
    """The CNI network's name; "" for a hostNetwork pod."""
    config_file: str
    """The CNI config the setup used; "" for a hostNetwork pod."""


class TeardownPod(Record, frozen=True, kw_only=True):
    """Release everything a pod's network holds: DEL on every plugin (each
    one even after another failed), then its namespace and record. An
    unknown pod is success (CRI: StopPodSandbox is idempotent)."""

    pod_id: str


class TornDown(Record, frozen=True, kw_only=True):
    pod_id: str
    found: bool
    """False when the pod had no network (nothing was done)."""


class Reconcile(Record, frozen=True, kw_only=True):
    """Start-up reconcile: tear down the network of every pod not live, and
    say which live pods have lost theirs. No setup of a pod outside
    ``live_pod_ids`` may run meanwhile."""

    live_pod_ids: list[str]
    """Every sandbox id the runtime pool knows."""


class Reconciled(Record, frozen=True, kw_only=True):
    torn_down: list[str]
    """Pods whose network was torn down."""
    failed: dict[str, str]
    """Pods whose teardown failed, by id: why (a later start retries)."""
    not_ready: list[str]
    """Live pods whose setup never finished or whose namespace vanished."""


STATUS = Op("net.status", Empty, NetworkStatus, read_only=True)
SETUP = Op("net.setup", SetupPod, PodNetwork, idempotent=True)
# Only the namespace of a pod setup finishes later (answers no addresses yet),
# so that the runtime pool can start the pod's infra in it while the chain
# runs; not for a hostNetwork pod (FAILED_PRECONDITION).
ENSURE_NETNS = Op("net.ensure_netns", SetupPod, PodNetwork, idempotent=True)
TEARDOWN = Op("net.teardown", TeardownPod, TornDown, idempotent=True)
RECONCILE = Op("net.reconcile", Reconcile, Reconciled)
# Each pod's interface counters, read inside its network namespace.
NETWORK_USAGE = Op("net.network_usage", NetworkQuery, NetworkSamples, read_only=True)

OPS = (STATUS, ENSURE_NETNS, SETUP, TEARDOWN, RECONCILE, NETWORK_USAGE)
