"""Pod sysctls: only namespaced ones, and none that would reach the host.

A sysctl is safe to set for one pod only when the kernel keeps it per
namespace. The namespaced families are the ones CRI-O allows
(``pkg/config/sysctl.go``): ``kernel.sem``, ``kernel.shm*``, ``kernel.msg*``
and ``fs.mqueue.*`` belong to the IPC namespace, ``net.*`` to the network
namespace. A pod on the host's network (or IPC) namespace would change the
host's value, so those are refused too.

CRI-O logs and skips such a sysctl; podvisor refuses the request with
INVALID_ARGUMENT naming it, because a pod silently running without the
setting it asked for hides the mistake. The kubelet's own sysctl admission
refuses the same pods first, so from a kubelet this only guards the API.

Keys may use the slash form (``net/ipv4/conf/eth0.100/rp_filter``), which
the kubelet also accepts: '/' and '.' swap roles, giving
``net.ipv4.conf.eth0/100.rp_filter``. Every key is checked against a
strict character set so no key can name a path outside ``/proc/sys``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ...proto.errors import InvalidArgument

IPC_EXACT = frozenset({"kernel.sem"})
IPC_PREFIXES = ("kernel.shm", "kernel.msg", "fs.mqueue.")
NET_PREFIX = "net."

# Dot-separated words; a word may hold '/' (an interface name that had a
# dot), never an empty or ".." part.
_KEY = re.compile(r"[A-Za-z0-9_\-@+]+(?:[./][A-Za-z0-9_\-@+]+)*")


def normalize(key: str) -> str:
    """The dotted form of a sysctl name (the kubelet's slash form converted)."""
    if "/" not in key or ("." in key and key.index(".") < key.index("/")):
        return key
    return key.translate(str.maketrans("./", "/."))


def pod_sysctls(sysctls: Mapping[str, str], host_network: bool, host_ipc: bool) -> dict[str, str]:
    """Validated, normalised sysctls for a pod's containers and infra process."""
    result: dict[str, str] = {}
    for raw, value in sysctls.items():
        key = normalize(raw)
        if not _KEY.fullmatch(key) or "." not in key:
            raise InvalidArgument(f"sysctl {raw!r}: not a valid sysctl name")
        if "\n" in value or "\0" in value:
            raise InvalidArgument(f"sysctl {raw!r}: the value holds a newline or NUL")
        if key in IPC_EXACT or key.startswith(IPC_PREFIXES):
            if host_ipc:
                raise InvalidArgument(
                    f"sysctl {raw!r} is not allowed in a pod that uses the host IPC namespace")
        elif key.startswith(NET_PREFIX):
            if host_network:
                raise InvalidArgument(
                    f"sysctl {raw!r} is not allowed in a pod that uses the host network")
        else:
            raise InvalidArgument(
                f"sysctl {raw!r} is not namespaced (allowed: kernel.sem, kernel.shm*, "
                "kernel.msg*, fs.mqueue.*, net.*)")
        result[key] = value
    return result
