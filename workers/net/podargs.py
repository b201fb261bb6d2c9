"""Checking ``net.*`` op arguments and turning CRI fields into CNI inputs.

The op arguments keep the CRI's own field names in snake_case, so the
supervisor passes what the kubelet sent without a translation of its own::

    pod_id          sandbox id: 1-128 of [A-Za-z0-9_.-], the CNI container id
    name, namespace, uid    PodSandboxMetadata (become CNI_ARGS K8S_POD_*)
    port_mappings   [{container_port, host_port (0: none), protocol
                      ("TCP"/"UDP"/"SCTP" or the CRI enum 0/1/2), host_ip}]
    dns             {servers: [ip], searches: [str], options: [str]} or None
    cgroup_parent   str ("" for none)
    host_network    bool, default false
    bandwidth       {ingress_rate, ingress_burst, egress_rate, egress_burst}
                    in bits/s and bits, or None (from the pod annotations)
    ips             [ip or ip/prefix] the pod asks for, or []

This module is the one place they become CNI_ARGS and capability args (CNI
CONVENTIONS.md: ``portMappings``, ``dns``, ``bandwidth``, ``ips``,
``cgroupPath``). Bad input raises InvalidArgument naming the field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...proto.errors import InvalidArgument

# CNI spec: a container ID is alphanumerics plus underscore, dot, hyphen.
# It also names files under the run and state dirs, hence the length cap.
_POD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# CNI_ARGS is "K=V;K=V": a value holding ';' or '=' would split wrongly.
_ARG_VALUE = re.compile(r"[^;=\s]*")
_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp", 0: "tcp", 1: "udp", 2: "sctp"}
# containerd's choice when only a rate is given: no burst limit.
_NO_BURST_LIMIT = 2**32 - 1
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


def pod_id(args: Mapping[str, Any]) -> str:
    value = args.get("pod_id")
    if not isinstance(value, str) or not _POD_ID.fullmatch(value):
        raise InvalidArgument(f"pod_id {value!r} is not a valid sandbox id "
                              "(1-128 of [A-Za-z0-9_.-], not starting with . _ -)")
    return value


def setup_request(args: Mapping[str, Any]) -> SetupRequest:
    pid = pod_id(args)
    meta = {key: _arg_value(args, key) for key in ("name", "namespace", "uid")}
    cni_args = (
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", meta["namespace"]),
        ("K8S_POD_NAME", meta["name"]),
        ("K8S_POD_INFRA_CONTAINER_ID", pid),
        ("K8S_POD_UID", meta["uid"]),
    )
    caps: dict[str, Any] = {}
    mappings = _port_mappings(args.get("port_mappings") or [])
    if mappings:
        caps["portMappings"] = mappings
    dns = _dns(args.get("dns"))
    if dns:
        caps["dns"] = dns
    bandwidth = _bandwidth(args.get("bandwidth"))
    if bandwidth:
        caps["bandwidth"] = bandwidth
    ips = _ips(args.get("ips") or [])
    if ips:
        caps["ips"] = ips
    cgroup = args.get("cgroup_parent") or ""
    if not isinstance(cgroup, str):
        raise InvalidArgument("cgroup_parent must be a string")
    if cgroup:
        caps["cgroupPath"] = cgroup
    return SetupRequest(pod_id=pid, host_network=bool(args.get("host_network", False)),
                        cni_args=cni_args, capability_args=caps, **meta)


def _arg_value(args: Mapping[str, Any], key: str) -> str:
    value = args.get(key, "")
    if not isinstance(value, str) or not _ARG_VALUE.fullmatch(value):
        raise InvalidArgument(f"{key} {value!r} must be a string without ';', '=' or spaces")
    return value


def _port_mappings(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise InvalidArgument("port_mappings must be a list")
    out = []
    for i, pm in enumerate(raw):
        if not isinstance(pm, dict):
            raise InvalidArgument(f"port_mappings[{i}] must be a map")
        host_port = _port(pm.get("host_port", 0), f"port_mappings[{i}].host_port", zero=True)
        container_port = _port(pm.get("container_port"), f"port_mappings[{i}].container_port")
        protocol = pm.get("protocol", "TCP")
        key = protocol.upper() if isinstance(protocol, str) else protocol
        if key not in _PROTOCOLS:
            raise InvalidArgument(f"port_mappings[{i}].protocol {protocol!r} is not "
                                  "TCP, UDP or SCTP")
        # CRI: host_port 0 means "no host port"; only exposed ports go to
        # portmap (CRI-O and containerd skip the others the same way).
        if host_port == 0:
            continue
        mapping: dict[str, Any] = {"hostPort": host_port, "containerPort": container_port,
                                   "protocol": _PROTOCOLS[key]}
        host_ip = pm.get("host_ip") or ""
        if host_ip:
            _ip(host_ip, f"port_mappings[{i}].host_ip")
            mapping["hostIP"] = host_ip
        out.append(mapping)
    return out


def _port(value: Any, name: str, zero: bool = False) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not (
            (0 if zero else 1) <= value <= 65535):
        raise InvalidArgument(f"{name} {value!r} is not a port number")
    return value


def _dns(raw: Any) -> dict[str, list[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument("dns must be a map of servers, searches, options")
    out = {}
    for key in ("servers", "searches", "options"):
        values = raw.get(key) or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidArgument(f"dns.{key} must be a list of strings")
        if key == "servers":
            for v in values:
                _ip(v, "dns.servers")
        if values:
            out[key] = list(values)
    return out


def _bandwidth(raw: Any) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument("bandwidth must be a map")
    out = {}
    for direction in ("ingress", "egress"):
        rate = raw.get(f"{direction}_rate", 0)
        burst = raw.get(f"{direction}_burst", 0)
        for key, value in ((f"{direction}_rate", rate), (f"{direction}_burst", burst)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"bandwidth.{key} must be a non-negative integer")
        if rate:
            out[f"{direction}Rate"] = rate
            out[f"{direction}Burst"] = burst or _NO_BURST_LIMIT
    return out


def _ips(raw: Any) -> list[str]:
    if not isinstance(raw, list):
        raise InvalidArgument("ips must be a list")
    for value in raw:
        if not isinstance(value, str):
            raise InvalidArgument(f"ips entry {value!r} is not a string")
        try:
            ipaddress.ip_interface(value)
        except ValueError:
            raise InvalidArgument(f"ips entry {value!r} is not an IP address") from None
    return list(raw)


def _ip(value: Any, name: str) -> None:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} {value!r} is not an IP address")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise InvalidArgument(f"{name} {value!r} is not an IP address") from None


def live_pod_ids(args: Mapping[str, Any]) -> set[str]:
    raw = args.get("live_pod_ids")
    if not isinstance(raw, list):
        raise InvalidArgument("live_pod_ids must be a list of sandbox ids")
    return {pod_id({"pod_id": v}) for v in raw}
