"""OCI runtime handlers (runc, crun): which ones this node has, is the
binary there, does it work, and what does it support.

``Runtimes`` is the ``[runtime]`` section as the pool uses it, read once at
worker start: the config cannot change while the daemon runs.

Probing a handler runs ``<binary> --version`` and ``<binary> features``;
the answer is cached for a few seconds so a burst of Status calls costs one
exec per handler, not one per call.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...proto.errors import InvalidArgument
from ...proto.runtime_ops import HandlerProbe
from .cgroup import hierarchy
from .cgroup.driver import Driver
from .monitor import Handler, MonitorZygote
from .spec_context import SpecSettings

PROBE_TTL = 5.0
PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Runtimes:
    """The handler table, the handler of pods that name none, and the
    cgroup driver every cgroup path is written for."""

    handlers: Mapping[str, Handler]
    default_runtime: str
    cgroups: Driver
    spec_settings: SpecSettings = field(default_factory=SpecSettings)
    # Forks the monitors (monitor.py); None: each is exec'd.
    zygote: MonitorZygote | None = None

    @classmethod
    def from_settings(cls, runtime: Mapping[str, Any], run_dir: str) -> Runtimes:
        """From the ``runtime`` section of the worker settings, and the
        pool's run dir (where the monitor zygote listens). The supervisor
        validated the section and writes every key, so none has a default
        here: a missing one is a bug that stops the worker at start."""
        cgroups = Driver(runtime["cgroup_manager"], hierarchy.host(), runtime["conmon_cgroup"])
        table = {name: Handler(name, spec["runtime_path"], spec["runtime_root"],
                               systemd_cgroup=cgroups.systemd)
                 for name, spec in runtime["runtimes"].items()}
        return cls(table, runtime["default_runtime"], cgroups, SpecSettings(
            seccomp_default_when_empty=runtime["seccomp_use_default_when_empty"],
            cdi_spec_dirs=tuple(runtime["cdi_spec_dirs"])),
            MonitorZygote.for_run_dir(run_dir) if runtime["monitor_zygote"] else None)

    def resolve(self, requested: str) -> str:
        """The handler a new pod runs with: the one it names, else the default."""
        name = requested or self.default_runtime
        if name not in self.handlers:
            raise InvalidArgument(f"unknown runtime handler {name!r}; this node has "
                                  f"{', '.join(sorted(self.handlers))}")
        return name


@dataclass(frozen=True)
class Probe:
    name: str
    path: str
    ok: bool
    version: str
    message: str
    mount_options: frozenset[str]

    def as_record(self, user_namespaces: bool = False) -> HandlerProbe:
        """``user_namespaces``: whether the node can give pods their own."""
        return HandlerProbe(name=self.name, path=self.path, ok=self.ok, version=self.version,
                            message=self.message,
                            recursive_read_only_mounts="rro" in self.mount_options,
                            user_namespaces=self.ok and user_namespaces)


_cache: dict[str, tuple[float, Probe]] = {}
_cache_lock = threading.Lock()


def probe(name: str, path: str, root: str = "") -> Probe:
    """Return the (possibly cached) health of handler ``name`` at ``path``,
    whose state lives in ``root``."""
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(name)
        if hit is not None and hit[1].path == path and now - hit[0] < PROBE_TTL:
            return hit[1]
    result = _probe(name, path, root)
    with _cache_lock:
        _cache[name] = (now, result)
    return result


def _probe(name: str, path: str, root: str) -> Probe:
    try:
        done = subprocess.run(_argv(path, root, "--version"), capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe(name, path, False, "", f"{path}: {exc}", frozenset())
    if done.returncode != 0:
        return Probe(name, path, False, "",
                     f"{path} --version exited {done.returncode}: {done.stderr.strip()[:200]}",
                     frozenset())
    version = done.stdout.splitlines()[0].strip() if done.stdout else ""
    options = _mount_options(path, root)
    if options is None:
        options = _known_mount_options(version, os.uname().release)
    return Probe(name, path, True, version, "", options)


def _argv(path: str, root: str, command: str) -> list[str]:
    # The handler's own --root: without it crun makes its default /run/crun,
    # a directory podvisor does not own, on any command, --version included.
    return [path, *(["--root", root] if root else []), command]


def _mount_options(path: str, root: str) -> frozenset[str] | None:
    """The mount options of the binary's `features` document (the OCI
    runtime-spec's); None when it has no such command."""
    try:
        done = subprocess.run(_argv(path, root, "features"), capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT, check=False)
        if done.returncode != 0:
            return None
        features = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    options = features.get("mountOptions") if isinstance(features, dict) else None
    return frozenset(o for o in options or () if isinstance(o, str))


# crun 1.8 (Debian 12's) has no `features` command, though it applies "rro" (seen
# with its 1.8.1: a recursive bind's submounts come out
# read-only); the kernel needs mount_setattr(2), Linux 5.12.
_CRUN_VERSION = re.compile(r"crun version (\d+)\.(\d+)")
_RRO_CRUN = (1, 8)
_RRO_KERNEL = (5, 12)


def _known_mount_options(version: str, kernel: str) -> frozenset[str]:
    """What a runtime without `features` is known to support, from its
    ``--version`` line and the kernel release: "rro" for crun 1.8 on Linux
    5.12 or later; nothing for any other."""
    found = _CRUN_VERSION.match(version)
    release = re.match(r"(\d+)\.(\d+)", kernel)
    if found is None or release is None:
        return frozenset()
    crun = (int(found.group(1)), int(found.group(2)))
    linux = (int(release.group(1)), int(release.group(2)))
    return frozenset({"rro"}) if crun >= _RRO_CRUN and linux >= _RRO_KERNEL else frozenset()
