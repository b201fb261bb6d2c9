"""Checking the values of ``net.*`` op arguments and turning CRI fields into
CNI inputs.

Their types are the contract's business (proto/net_ops.py); what is left
here is what a type cannot say: sandbox id syntax, CNI_ARGS-safe metadata,
port ranges, IP address syntax. Bad values raise InvalidArgument naming the
field.

This module is the one place the arguments become CNI_ARGS and capability
args (CNI CONVENTIONS.md: ``portMappings``, ``dns``, ``cgroupPath``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from ...proto.errors import InvalidArgument
from ...proto.net_ops import DnsConfig, PortMapping, SetupPod

# CNI spec: a container ID is alphanumerics plus underscore, dot, hyphen.
# It also names files under the run and state dirs, hence the length cap.
_POD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# CNI_ARGS is "K=V;K=V": a value holding ';' or '=' would split wrongly.
_ARG_VALUE = re.compile(r"[^;=\s]*")
# CRI Protocol enum names -> portmap's protocol names.
_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
IFNAME = "eth0"


@dataclass(frozen=True)
class SetupRequest:
    pod_id: str
    name: str
    namespace: str
    uid: str
    host_network: bool
    cni_args: tuple[tuple[str, str], ...]
    capability_args: dict[str, Any] = field(default_factory=dict)
    userns_path: str = ""
    """The pod's pinned user namespace, to own its network namespace."""


def pod_id(value: str, name: str = "pod_id") -> str:
    if not _POD_ID.fullmatch(value):
        raise InvalidArgument(f"{name} {value!r} is not a valid sandbox id "
                              "(1-128 of [A-Za-z0-9_.-], not starting with . _ -)")
    return value


def setup_request(args: SetupPod) -> SetupRequest:
    pid = pod_id(args.pod_id)
    for key, value in (("name", args.name), ("namespace", args.namespace), ("uid", args.uid)):
        if not _ARG_VALUE.fullmatch(value):
            raise InvalidArgument(f"{key} {value!r} must not hold ';', '=' or spaces")
    cni_args = (
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", args.namespace),
        ("K8S_POD_NAME", args.name),
        ("K8S_POD_INFRA_CONTAINER_ID", pid),
        ("K8S_POD_UID", args.uid),
    )
    caps: dict[str, Any] = {}
    mappings = _port_mappings(args.port_mappings)
    if mappings:
        caps["portMappings"] = mappings
    dns = _dns(args.dns)
    if dns:
        caps["dns"] = dns
    if args.cgroup_parent:
        caps["cgroupPath"] = args.cgroup_parent
    if args.userns_path and (not args.userns_path.startswith("/")
                             or ".." in args.userns_path.split("/")):
        raise InvalidArgument(f"userns_path {args.userns_path[:200]!r} is not an absolute path")
    return SetupRequest(pod_id=pid, name=args.name, namespace=args.namespace, uid=args.uid,
                        host_network=args.host_network, cni_args=cni_args,
                        capability_args=caps, userns_path=args.userns_path)


def _port_mappings(mappings: list[PortMapping]) -> list[dict[str, Any]]:
    out = []
    for i, pm in enumerate(mappings):
        _port(pm.host_port, f"port_mappings[{i}].host_port", zero=True)
        _port(pm.container_port, f"port_mappings[{i}].container_port")
        if pm.protocol not in _PROTOCOLS:
            raise InvalidArgument(f"port_mappings[{i}].protocol {pm.protocol!r} is not "
                                  "TCP, UDP or SCTP")
        # CRI: host_port 0 means "no host port"; only exposed ports go to
        # portmap (CRI-O and containerd skip the others the same way).
        if pm.host_port == 0:
            continue
        mapping: dict[str, Any] = {"hostPort": pm.host_port,
                                   "containerPort": pm.container_port,
                                   "protocol": _PROTOCOLS[pm.protocol]}
        if pm.host_ip:
            _ip(pm.host_ip, f"port_mappings[{i}].host_ip")
            mapping["hostIP"] = pm.host_ip
        out.append(mapping)
    return out


def _port(value: int, name: str, zero: bool = False) -> None:
    if not (0 if zero else 1) <= value <= 65535:
        raise InvalidArgument(f"{name} {value} is not a port number")


def _dns(dns: DnsConfig | None) -> dict[str, list[str]]:
    if dns is None:
        return {}
    for server in dns.servers:
        _ip(server, "dns.servers")
    given = {"servers": dns.servers, "searches": dns.searches, "options": dns.options}
    return {key: list(values) for key, values in given.items() if values}


def _ip(value: str, name: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise InvalidArgument(f"{name} {value!r} is not an IP address") from None


def live_pod_ids(ids: list[str]) -> set[str]:
    return {pod_id(v, "each of live_pod_ids") for v in ids}
