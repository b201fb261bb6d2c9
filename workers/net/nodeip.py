"""The node's own IPs, reported as the pod IPs of host-network pods.

A hostNetwork pod shares the node's namespace, so its IPs are the node's.
As kubelet's node-IP detection does when no --node-ip is given, we take,
per family, the interface of the default route (lowest metric) and its
preferred source address, else the first global address on that interface,
else the first global address anywhere. Read through pyroute2 on every
call: addresses change (DHCP), and a lookup is two netlink dumps.
"""

from __future__ import annotations

import socket
from typing import Any

from pyroute2 import IPRoute

_SCOPE_UNIVERSE = 0
_MAIN_TABLE = 254


def node_ips() -> list[str]:
    """IPv4 first, then IPv6; empty if the node has no global address."""
    ips: list[str] = []
    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            ip = _default_route_ip(ipr, family) or _first_global(ipr, family, None)
            if ip:
                ips.append(ip)
    return ips


def _default_route_ip(ipr: Any, family: int) -> str | None:
    defaults = [r for r in ipr.get_routes(family=family, table=_MAIN_TABLE)
                if r["dst_len"] == 0 and r.get_attr("RTA_OIF") is not None]
    if not defaults:
        return None
    best = min(defaults, key=lambda r: r.get_attr("RTA_PRIORITY") or 0)
    src = best.get_attr("RTA_PREFSRC")
    if src:
        return str(src)
    return _first_global(ipr, family, best.get_attr("RTA_OIF"))


def _first_global(ipr: Any, family: int, index: int | None) -> str | None:
    for addr in ipr.get_addr(family=family):
        if addr["scope"] == _SCOPE_UNIVERSE and index in (None, addr["index"]):
            return str(addr.get_attr("IFA_ADDRESS"))
    return None
