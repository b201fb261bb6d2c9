"""The seccomp filter of a container: ``linux.seccomp`` of its OCI spec.

What the CRI asks, in ``LinuxContainerSecurityContext``:

- ``seccomp`` (a ``SecurityProfile``): ``RuntimeDefault`` is podvisor's
  own profile (seccomp_default.py); ``Unconfined`` is no filter;
  ``Localhost`` is a profile file on the node named by ``localhost_ref``
  (an absolute path);
- else the deprecated ``seccomp_profile_path``: ``runtime/default`` (or
  ``docker/default``), ``unconfined``, ``localhost/<absolute path>``;
- neither: no filter, or RuntimeDefault when ``[podvisor.runtime]
  seccomp_use_default_when_empty`` is set (CRI-O's key). The kubelet
  always sends one: Unconfined unless the pod or its ``--seccomp-default``
  says otherwise.

A privileged container gets no filter, whatever it asks (as CRI-O and
containerd do). A profile that cannot be honoured is refused before
anything is made: a missing file is NOT_FOUND, one that is not a valid
profile INVALID_ARGUMENT, naming the path.

Profile files are in the format runtimes share (the Docker/moby JSON:
``defaultAction``, ``architectures`` or ``archMap``, ``syscalls`` with
``names``, ``action``, ``errnoRet``, ``args`` and ``includes`` /
``excludes`` by capability and architecture); they are turned into the
OCI form here, with the rules that do not apply to this container and
machine left out, so runc and crun load exactly what applies. An
``includes.minKernel`` is not checked: a syscall this kernel lacks is
skipped by the runtime anyway.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import InvalidArgument, NotFound, shorten
from . import seccomp_default

# A profile is a few KiB; a bigger file is not one.
MAX_PROFILE_BYTES = 1 << 20

ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG",
})
OPERATORS = frozenset({
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
})
FLAGS = frozenset({"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                   "SECCOMP_FILTER_FLAG_SPEC_ALLOW"})
# What profile files call the machine (Go's GOARCH, or uname's), by uname -m.
_ARCH_NAMES: dict[str, frozenset[str]] = {
    "x86_64": frozenset({"amd64", "x86_64", "SCMP_ARCH_X86_64"}),
    "aarch64": frozenset({"arm64", "aarch64", "SCMP_ARCH_AARCH64"}),
    "ppc64le": frozenset({"ppc64le", "SCMP_ARCH_PPC64LE"}),
    "s390x": frozenset({"s390x", "SCMP_ARCH_S390X"}),
    "riscv64": frozenset({"riscv64", "SCMP_ARCH_RISCV64"}),
}

DEFAULT, UNCONFINED, LOCALHOST = "RuntimeDefault", "Unconfined", "Localhost"


def requested(sc: api.LinuxContainerSecurityContext, default_when_empty: bool
              ) -> tuple[str, str]:
    """(kind, profile path) the container asks for; the path only for
    Localhost."""
    if sc.HasField("seccomp"):
        profile = sc.seccomp
        kind = api.SecurityProfile.ProfileType.Name(profile.profile_type)
        if kind == LOCALHOST:
            return LOCALHOST, _absolute(profile.localhost_ref, "seccomp.localhost_ref")
        return kind, ""
    legacy = sc.seccomp_profile_path
    if not legacy:
        return (DEFAULT if default_when_empty else UNCONFINED), ""
    if legacy in ("runtime/default", "docker/default"):
        return DEFAULT, ""
    if legacy == "unconfined":
        return UNCONFINED, ""
    if legacy.startswith("localhost/"):
        return LOCALHOST, _absolute(legacy.removeprefix("localhost/"), "seccomp_profile_path")
    raise InvalidArgument(f"seccomp_profile_path {shorten(legacy)}: expected runtime/default, "
                          "unconfined or localhost/<absolute path>")


def seccomp(sc: api.LinuxContainerSecurityContext, capabilities: frozenset[str],
            privileged: bool, default_when_empty: bool = False,
            machine: str | None = None) -> dict[str, Any] | None:
    """The OCI ``linux.seccomp`` of the container; None for no filter."""
    kind, path = requested(sc, default_when_empty)
    if privileged or kind == UNCONFINED:
        return None
    machine = machine or platform.machine()
    if kind == DEFAULT:
        return seccomp_default.profile(capabilities, machine)
    return to_oci(_load(path), capabilities, machine, path)


def _absolute(path: str, field: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"{field} {shorten(path)}: a Localhost seccomp profile is named "
                              "by the absolute path of its file on the node")
    # normpath keeps a leading "//" (POSIX leaves it open); one is enough.
    return os.path.normpath("/" + path.lstrip("/"))


def _load(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise NotFound(f"seccomp profile {shorten(path)} does not exist on this node") from None
    except IsADirectoryError:
        raise InvalidArgument(f"seccomp profile {shorten(path)} is a directory") from None
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile {shorten(path)}: {exc.strerror}") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise InvalidArgument(f"seccomp profile {shorten(path)} is over {MAX_PROFILE_BYTES} "
                              "bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"seccomp profile {shorten(path)} is not JSON: "
                              f"{shorten(str(exc))}") from None


def to_oci(profile: Any, capabilities: frozenset[str], machine: str,
           path: str = "profile") -> dict[str, Any]:
    """A profile file's JSON as the OCI ``linux.seccomp`` for a container
    holding ``capabilities`` on ``machine``."""
    where = f"seccomp profile {shorten(path)}"
    if not isinstance(profile, dict):
        raise InvalidArgument(f"{where}: expected a JSON object")
    oci: dict[str, Any] = {"defaultAction": _action(profile.get("defaultAction"), where)}
    if "defaultErrnoRet" in profile:
        oci["defaultErrnoRet"] = _uint(profile["defaultErrnoRet"], f"{where}: defaultErrnoRet")
    arches = _architectures(profile, machine, where)
    if arches:
        oci["architectures"] = arches
    flags = profile.get("flags") or []
    if not isinstance(flags, list) or not set(flags) <= FLAGS:
        raise InvalidArgument(f"{where}: flags must be a list from {', '.join(sorted(FLAGS))}")
    if flags:
        oci["flags"] = flags
    rules = profile.get("syscalls") or []
    if not isinstance(rules, list):
        raise InvalidArgument(f"{where}: syscalls must be a list")
    oci["syscalls"] = [rule for i, raw in enumerate(rules)
                       if (rule := _rule(raw, capabilities, machine, f"{where}: syscalls[{i}]"))]
    return oci


def _action(value: Any, where: str) -> str:
    if value not in ACTIONS:
        raise InvalidArgument(f"{where}: action {shorten(str(value))} is not one of "
                              f"{', '.join(sorted(ACTIONS))}")
    return str(value)


def _uint(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise InvalidArgument(f"{where}: expected an unsigned integer")
    return value


def _architectures(profile: Mapping[str, Any], machine: str, where: str) -> list[str]:
    """``architectures``, or the ``archMap`` entry of this machine with its
    sub-architectures."""
    arches = profile.get("architectures")
    if arches is not None:
        if not isinstance(arches, list) or not all(isinstance(a, str) for a in arches):
            raise InvalidArgument(f"{where}: architectures must be a list of names")
        return list(arches)
    native = seccomp_default.architectures(machine)
    for entry in profile.get("archMap") or []:
        if isinstance(entry, dict) and native and entry.get("architecture") == native[0]:
            subs = entry.get("subArchitectures") or []
            return [native[0], *(s for s in subs if isinstance(s, str))]
    return []


def _rule(raw: Any, capabilities: frozenset[str], machine: str,
          where: str) -> dict[str, Any] | None:
    """One syscall rule in OCI form; None when its includes or excludes
    leave it out for this container and machine."""
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: expected an object")
    names = raw.get("names")
    if names is None and isinstance(raw.get("name"), str):
        names = [raw["name"]]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n
                                                           for n in names):
        raise InvalidArgument(f"{where}: names must be a non-empty list of syscall names")
    if not _applies(raw.get("includes"), raw.get("excludes"), capabilities, machine, where):
        return None
    rule: dict[str, Any] = {"names": names, "action": _action(raw.get("action"), where)}
    if "errnoRet" in raw:
        rule["errnoRet"] = _uint(raw["errnoRet"], f"{where}: errnoRet")
    args = raw.get("args") or []
    if not isinstance(args, list):
        raise InvalidArgument(f"{where}: args must be a list")
    if args:
        rule["args"] = [_arg(arg, f"{where}: args[{i}]") for i, arg in enumerate(args)]
    return rule


def _arg(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: expected an object")
    index = _uint(raw.get("index"), f"{where}: index")
    if index > 5:
        raise InvalidArgument(f"{where}: index {index} is past a syscall's six arguments")
    op = raw.get("op")
    if op not in OPERATORS:
        raise InvalidArgument(f"{where}: op {shorten(str(op))} is not one of "
                              f"{', '.join(sorted(OPERATORS))}")
    return {"index": index, "value": _uint(raw.get("value", 0), f"{where}: value"),
            "valueTwo": _uint(raw.get("valueTwo", 0), f"{where}: valueTwo"), "op": op}


def _applies(includes: Any, excludes: Any, capabilities: frozenset[str], machine: str,
             where: str) -> bool:
    names = _ARCH_NAMES.get(machine, frozenset({machine}))
    if includes:
        caps, arches = _filter(includes, f"{where}: includes")
        if not caps <= capabilities or (arches and not arches & names):
            return False
    if excludes:
        caps, arches = _filter(excludes, f"{where}: excludes")
        if caps & capabilities or arches & names:
            return False
    return True


def _filter(raw: Any, where: str) -> tuple[frozenset[str], frozenset[str]]:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: expected an object")
    caps, arches = raw.get("caps") or [], raw.get("arches") or []
    if not isinstance(caps, list) or not isinstance(arches, list):
        raise InvalidArgument(f"{where}: caps and arches must be lists")
    return frozenset(str(c).upper() if str(c).upper().startswith("CAP_")
                     else "CAP_" + str(c).upper() for c in caps), frozenset(map(str, arches))
