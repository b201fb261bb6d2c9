"""Capabilities, masked and read-only paths, and what podvisor does not confine.

Capabilities follow CRI-O (``internal/factory/container``
``SpecSetupCapabilities``): a container starts from CRI-O's default set
(``internal/config/capabilities``: CHOWN DAC_OVERRIDE FSETID FOWNER SETGID
SETUID SETPCAP NET_BIND_SERVICE KILL), then the CRI ``add_capabilities``
and ``drop_capabilities`` apply; "ALL" in add is every capability, "ALL"
in drop clears the defaults first so that the adds alone remain (both as
kubernetes#51980 asks). The same list goes to the bounding, effective and
permitted sets; inheritable stays empty (CVE-2022-27652) and ambient holds
only what ``add_ambient_capabilities`` asks for. A privileged container
gets the daemon's own bounding set, since the runtime cannot grant more.

Masked and read-only paths: CRI-O's defaults (podman's
``DefaultMaskedPaths`` plus /proc/asound and /proc/interrupts, which CRI-O
adds; ``DefaultReadOnlyPaths``). When the kubelet sends ``masked_paths``,
CRI-O keeps its defaults and adds the kubelet's (``appendDefaultMaskedPaths``),
and so does podvisor; ``readonly_paths`` from the CRI replace the default
list. An empty list cannot be told from an absent one in proto3, so it
means the defaults (``procMount: Unmasked`` needs user namespaces, which
podvisor does not offer). Privileged containers get neither list.

Not confined, on purpose: podvisor has no seccomp profile support yet,
and this node runs no AppArmor or SELinux LSM, so every container runs
with seccomp, AppArmor and SELinux unconfined whatever the CRI asks
(RuntimeDefault and Localhost included), exactly as CRI-O does when
seccomp is disabled (``setupSeccomp``: ``Linux.Seccomp = nil``). The spec
carries no ``seccomp``, ``apparmorProfile`` or ``selinuxLabel`` at all.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...proto import api_pb2 as api
from ...proto.errors import FailedPrecondition, InvalidArgument

# Linux capability numbers 0..40 (include/uapi/linux/capability.h); the
# index in this tuple is the bit in /proc/<pid>/status Cap* masks.
CAPABILITIES: tuple[str, ...] = tuple("CAP_" + name for name in (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
))

DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_KILL",
)

DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware", "/sys/fs/selinux",
)

DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)

_ORDER = {name: bit for bit, name in enumerate(CAPABILITIES)}


def capability_name(name: str) -> str:
    """``"net_admin"`` or ``"CAP_NET_ADMIN"`` → ``"CAP_NET_ADMIN"``; unknown names are refused."""
    upper = name.strip().upper()
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in _ORDER:
        raise InvalidArgument(f"unknown capability {name!r}")
    return full


def capabilities(caps: api.Capability, privileged: bool,
                 available: Iterable[str]) -> dict[str, list[str]]:
    """The OCI ``process.capabilities`` for a CRI ``Capability`` message.

    ``available`` is the daemon's bounding set: "ALL" means all of it, and
    naming a capability outside it is a FailedPrecondition, because the
    runtime would fail the create with a bare EPERM.
    """
    have = set(available)
    if privileged:
        granted = have
        ambient: set[str] = set()
    else:
        add = list(caps.add_capabilities)
        drop = list(caps.drop_capabilities)
        add_all = any(c.upper() == "ALL" for c in add)
        drop_all = any(c.upper() == "ALL" for c in drop)
        granted = set()
        if add_all:
            granted |= have
        elif not drop_all:
            granted |= set(DEFAULT_CAPABILITIES) & have
        # Individual adds and drops apply after "ALL", so "add ALL, drop
        # CHOWN" is everything but CHOWN, and "drop ALL, add X" is just X.
        granted |= {capability_name(c) for c in add if c.upper() != "ALL"}
        granted -= {capability_name(c) for c in drop if c.upper() != "ALL"}
        ambient = {capability_name(c) for c in caps.add_ambient_capabilities}
        granted |= ambient
        missing = sorted((granted | ambient) - have, key=_ORDER.__getitem__)
        if missing:
            raise FailedPrecondition(
                f"capabilities {', '.join(missing)} are not in the runtime's bounding set")
    ordered = sorted(granted, key=_ORDER.__getitem__)
    ambient_list = sorted(ambient, key=_ORDER.__getitem__)
    # An ambient capability must also be inheritable (capabilities(7)).
    return {"bounding": ordered, "effective": list(ordered), "permitted": list(ordered),
            "inheritable": ambient_list, "ambient": list(ambient_list)}


def masked_paths(security_context: api.LinuxContainerSecurityContext,
                 privileged: bool) -> list[str]:
    if privileged:
        return []
    given = _absolute(list(security_context.masked_paths), "masked_paths")
    return sorted(set(DEFAULT_MASKED_PATHS) | set(given))


def readonly_paths(security_context: api.LinuxContainerSecurityContext,
                   privileged: bool) -> list[str]:
    if privileged:
        return []
    given = _absolute(list(security_context.readonly_paths), "readonly_paths")
    return given if given else list(DEFAULT_READONLY_PATHS)


def _absolute(paths: list[str], field: str) -> list[str]:
    # Both lists are paths inside the container; the runtime resolves them
    # under the rootfs, and a relative one has no meaning there.
    for path in paths:
        if not path.startswith("/"):
            raise InvalidArgument(f"{field}: {path!r} is not an absolute path")
    return paths
