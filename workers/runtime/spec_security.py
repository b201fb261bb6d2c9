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

Linux security modules. Seccomp is spec_seccomp.py's. AppArmor and
SELinux are applied where the node runs them and refused where it does
not, never dropped:

- AppArmor (``apparmor``, else the deprecated ``apparmor_profile``):
  ``Unconfined`` runs unconfined. ``Localhost`` names a profile that must
  be loaded in the kernel (``localhost_ref`` bare or, as critest sends it,
  with the deprecated field's ``localhost/`` prefix); it becomes
  ``process.apparmorProfile``. ``RuntimeDefault`` is ``podvisor-default``,
  podvisor's own profile, which apparmor_default.py writes and loads at
  first use (a failure to load is FAILED_PRECONDITION). A container that
  asks for nothing gets RuntimeDefault where the node can load it (AppArmor
  on and apparmor_parser installed), as CRI-O and containerd do
  (kubernetes#51746), else runs unconfined; a pod's infra process that
  asks for nothing runs unconfined, as neither peer confines its pause
  process. On a node without AppArmor any profile but Unconfined is
  FAILED_PRECONDITION, as the kubelet's own admission refuses such pods.
  A privileged container runs unconfined whatever it asks for (CRI-O).
- SELinux: any ``selinux_options`` field set on a node without SELinux is
  FAILED_PRECONDITION. podvisor does not label processes or mounts yet,
  so on a node with SELinux a label request is refused the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...proto import api_pb2 as api
from ...proto.errors import FailedPrecondition, InvalidArgument, shorten
from . import apparmor_default

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


def apparmor_profile(sc: api.LinuxContainerSecurityContext, privileged: bool, enabled: bool,
                     loaded: str = apparmor_default.LOADED_PROFILES,
                     default: apparmor_default.DefaultProfile | None = None) -> str | None:
    """The ``process.apparmorProfile`` of the container; None: unconfined.

    ``default`` loads ``podvisor-default`` (the worker process's own loader
    unless a test hands one in).
    """
    default = default or apparmor_default.NODE
    if sc.HasField("apparmor"):
        kind = api.SecurityProfile.ProfileType.Name(sc.apparmor.profile_type)
        # The kubelet sends the bare profile name; critest sends
        # "localhost/<name>", the deprecated field's form. containerd strips
        # that prefix here too, and no profile name can start with it.
        name = sc.apparmor.localhost_ref.removeprefix("localhost/")
    else:
        legacy = sc.apparmor_profile
        if legacy == "unconfined":
            return None
        if legacy == "":
            # Nothing asked: the runtime's default where it can be loaded
            # (containerd sputil GenerateApparmorSpecOpts, CRI-O Apply).
            if not enabled or privileged or not default.usable():
                return None
            kind, name = "RuntimeDefault", ""
        elif legacy == "runtime/default":
            kind, name = "RuntimeDefault", ""
        elif legacy.startswith("localhost/"):
            kind, name = "Localhost", legacy.removeprefix("localhost/")
        else:
            raise InvalidArgument(f"apparmor_profile {shorten(legacy)}: expected "
                                  "runtime/default, unconfined or localhost/<profile>")
    if kind == "Unconfined" or privileged:
        return None
    wanted = apparmor_default.PROFILE if kind == "RuntimeDefault" else name
    if not wanted:
        raise InvalidArgument("apparmor: a Localhost profile needs localhost_ref")
    if not enabled:
        raise FailedPrecondition(f"AppArmor profile {shorten(wanted)} ({kind}) was asked for, "
                                 "but AppArmor is not enabled on this node")
    if kind == "RuntimeDefault":
        return default.ensure()
    if wanted not in apparmor_default.loaded_profiles(loaded):
        raise FailedPrecondition(f"AppArmor profile {shorten(wanted)} ({kind}) is not loaded "
                                 "on this node")
    return wanted


def check_selinux(options: api.SELinuxOption, enabled: bool, what: str) -> None:
    """Refuse an SELinux label podvisor cannot apply."""
    asked = {field: getattr(options, field) for field in ("user", "role", "type", "level")
             if getattr(options, field)}
    if not asked:
        return
    label = ":".join(shorten(v) for v in asked.values())
    why = ("podvisor does not apply SELinux labels yet" if enabled
           else "SELinux is not enabled on this node")
    raise FailedPrecondition(f"{what} selinux_options {label} were asked for, but {why}")


def pod_security(sc: api.LinuxSandboxSecurityContext) -> api.LinuxContainerSecurityContext:
    """The pod's seccomp, AppArmor and SELinux requests (for its infra
    process) in the container message the checks read."""
    out = api.LinuxContainerSecurityContext(seccomp_profile_path=sc.seccomp_profile_path,
                                            selinux_options=sc.selinux_options,
                                            privileged=sc.privileged)
    if sc.HasField("seccomp"):
        out.seccomp.CopyFrom(sc.seccomp)
    if sc.HasField("apparmor"):
        out.apparmor.CopyFrom(sc.apparmor)
    else:
        # A pod that asks for nothing keeps its infra process unconfined:
        # neither CRI-O nor containerd confines the pause process, and the
        # default a container gets when it asks for nothing is the
        # container's (apparmor_profile).
        out.apparmor_profile = "unconfined"
    return out
