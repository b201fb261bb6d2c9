"""The node's own IPs, reported as the pod IPs of host-network pods.

A hostNetwork pod shares the node's namespace, so its IPs are the node's.
As kubelet's node-IP detection does when no --node-ip is given, we take,
per family, the interface of the default route (lowest metric) and its
preferred source address, else the first global address on that interface,
else the first global address anywhere. Read from the kernel on every
call: addresses change (DHCP), and a lookup is two netlink dumps.
"""

from __future__ import annotations

import socket

from . import rtnl

_SCOPE_UNIVERSE = 0
_MAIN_TABLE = 254


def node_ips() -> list[str]:
    """IPv4 first, then IPv6; empty if the node has no global address."""
    ips: list[str] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        addresses = rtnl.addresses(family)
        ip = _default_route_ip(family, addresses) or _first_global(addresses, None)
        if ip:
            ips.append(ip)
    return ips


def _default_route_ip(family: int, addresses: list[rtnl.Address]) -> str | None:
    defaults = [r for r in rtnl.routes(family)
                if r.table == _MAIN_TABLE and r.dst_len == 0 and r.oif is not None]
    if not defaults:
        return None
    best = min(defaults, key=lambda r: r.priority)
    return best.prefsrc or _first_global(addresses, best.oif)


def _first_global(addresses: list[rtnl.Address], index: int | None) -> str | None:
    for addr in addresses:
        if addr.scope == _SCOPE_UNIVERSE and index in (None, addr.index):
            return addr.address
    return None
