"""CDI devices: what a Container Device Interface spec injects into a
container (GPUs, and the devices DRA drivers prepare).

A container asks for devices by fully-qualified name,
``<vendor>/<class>=<device>``, in ``ContainerConfig.CDI_devices`` (or, as
older device plugins do, in annotations whose key starts with
``cdi.k8s.io/``, a comma-separated list). Their definitions are CDI spec
files (``*.json``, ``*.yaml``, ``*.yml``) in the spec directories,
``/etc/cdi`` then ``/var/run/cdi`` by default (``[podvisor.runtime]
cdi_spec_dirs``); a device defined again in a later directory replaces the
earlier one, as the CDI spec orders them.

Each named device's ``containerEdits``, and those of the spec file it
comes from, are applied to the OCI spec: device nodes (with their device
cgroup rule; a node's type, major and minor are read from the host when
the spec leaves them out), environment variables (replacing one of the same
name), bind mounts, and OCI hooks. A device no spec defines, or a spec file
that does not parse, is refused naming it: the container would otherwise
start without its devices.

The spec files are read on every create that asks for a device: a DRA
driver writes them just before, and reading a few small files costs
nothing next to a container start.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from ...proto import api_pb2 as api
from ...proto.errors import InvalidArgument, NotFound, shorten

ANNOTATION_PREFIX = "cdi.k8s.io/"
DEFAULT_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
SPEC_SUFFIXES = (".json", ".yaml", ".yml")
# CDI's qualified names: <vendor>/<class>=<name>.
_QUALIFIED = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]*)/([A-Za-z0-9][A-Za-z0-9_.-]*)="
                        r"([A-Za-z0-9][A-Za-z0-9_.:-]*)")
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer",
              "poststart", "poststop")
MAX_SPEC_BYTES = 4 << 20


@dataclass(frozen=True)
class Edits:
    """One ``containerEdits`` section, with the file it came from."""

    source: str
    edits: Mapping[str, Any]


def requested(config: api.ContainerConfig) -> list[str]:
    """The qualified device names the container asks for, each once."""
    names = [d.name for d in config.CDI_devices]
    for key, value in sorted(config.annotations.items()):
        if key.startswith(ANNOTATION_PREFIX):
            names += [n.strip() for n in value.split(",") if n.strip()]
    for name in names:
        if not _QUALIFIED.fullmatch(name):
            raise InvalidArgument(f"CDI device {shorten(name)}: expected a fully-qualified "
                                  "name, <vendor>/<class>=<device>")
    return list(dict.fromkeys(names))


def resolve(names: Sequence[str], spec_dirs: Iterable[str]) -> list[Edits]:
    """The edits that the devices ``names`` bring: each spec file's own
    edits once, then each device's."""
    if not names:
        return []
    devices: dict[str, tuple[str, Mapping[str, Any], Mapping[str, Any]]] = {}
    for path in _spec_files(spec_dirs):
        spec = _load(path)
        kind = spec.get("kind")
        if not isinstance(kind, str) or "/" not in kind:
            raise InvalidArgument(f"CDI spec {shorten(path)}: kind must be <vendor>/<class>")
        shared = spec.get("containerEdits") or {}
        for device in _list(spec.get("devices"), path, "devices"):
            name = device.get("name") if isinstance(device, dict) else None
            if not isinstance(name, str) or not name:
                raise InvalidArgument(f"CDI spec {shorten(path)}: a device has no name")
            devices[f"{kind}={name}"] = (path, shared, device.get("containerEdits") or {})
    missing = [n for n in names if n not in devices]
    if missing:
        raise NotFound(f"CDI device {shorten(', '.join(missing))} is not defined by any spec in "
                       f"{', '.join(spec_dirs)}")
    found: list[Edits] = []
    seen_files: set[str] = set()
    for name in names:
        path, shared, own = devices[name]
        if path not in seen_files and shared:
            found.append(Edits(path, shared))
        seen_files.add(path)
        found.append(Edits(path, own))
    return found


def apply(spec: dict[str, Any], edits: Sequence[Edits]) -> None:
    """Inject ``edits`` into the OCI ``spec``, in order."""
    for edit in edits:
        where = f"CDI spec {shorten(edit.source)}"
        if not isinstance(edit.edits, Mapping):
            raise InvalidArgument(f"{where}: containerEdits must be an object")
        _env(spec, _list(edit.edits.get("env"), edit.source, "env"), where)
        for node in _list(edit.edits.get("deviceNodes"), edit.source, "deviceNodes"):
            _device_node(spec, node, where)
        for mount in _list(edit.edits.get("mounts"), edit.source, "mounts"):
            _mount(spec, mount, where)
        for hook in _list(edit.edits.get("hooks"), edit.source, "hooks"):
            _hook(spec, hook, where)


def _spec_files(spec_dirs: Iterable[str]) -> list[str]:
    files = []
    for directory in spec_dirs:
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        files += [os.path.join(directory, n) for n in names if n.endswith(SPEC_SUFFIXES)]
    return files


def _load(path: str) -> Mapping[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"CDI spec {shorten(path)}: {exc.strerror}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise InvalidArgument(f"CDI spec {shorten(path)} is over {MAX_SPEC_BYTES} bytes")
    try:
        # JSON is YAML: one parser reads both, safely (no object tags).
        spec = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"CDI spec {shorten(path)} does not parse: "
                              f"{shorten(str(exc), 200)}") from None
    if not isinstance(spec, dict):
        raise InvalidArgument(f"CDI spec {shorten(path)}: expected an object")
    return spec


def _list(value: Any, source: str, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"CDI spec {shorten(source)}: {field} must be a list")
    return value


def _env(spec: dict[str, Any], env: list[Any], where: str) -> None:
    process = spec.setdefault("process", {})
    current: list[str] = process.setdefault("env", [])
    for entry in env:
        if not isinstance(entry, str) or "=" not in entry or entry.startswith("="):
            raise InvalidArgument(f"{where}: env entry {shorten(str(entry))} is not NAME=value")
        name = entry.split("=", 1)[0]
        current[:] = [e for e in current if e.split("=", 1)[0] != name]
        current.append(entry)


def _device_node(spec: dict[str, Any], node: Any, where: str) -> None:
    if not isinstance(node, dict) or not isinstance(node.get("path"), str) \
            or not node["path"].startswith("/"):
        raise InvalidArgument(f"{where}: a deviceNode needs an absolute path")
    path = node["path"]
    host = node.get("hostPath") or path
    kind, major, minor = node.get("type"), node.get("major"), node.get("minor")
    if kind is None or major is None or minor is None:
        try:
            st = os.stat(host)
        except OSError as exc:
            raise NotFound(f"{where}: device node {shorten(host)}: {exc.strerror}") from None
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise InvalidArgument(f"{where}: {shorten(host)} is not a device node")
        kind = kind or ("c" if stat.S_ISCHR(st.st_mode) else "b")
        major = os.major(st.st_rdev) if major is None else major
        minor = os.minor(st.st_rdev) if minor is None else minor
    if kind not in ("c", "b", "u", "p"):
        raise InvalidArgument(f"{where}: device type {shorten(str(kind))} is not c, b, u or p")
    entry: dict[str, Any] = {"path": path, "type": kind, "major": int(major),
                             "minor": int(minor)}
    for key in ("fileMode", "uid", "gid"):
        if node.get(key) is not None:
            entry[key] = int(node[key])
    linux = spec.setdefault("linux", {})
    devices: list[dict[str, Any]] = linux.setdefault("devices", [])
    devices[:] = [d for d in devices if d.get("path") != path]
    devices.append(entry)
    access = node.get("permissions") or "rwm"
    if not isinstance(access, str) or not access or set(access) - set("rwm"):
        raise InvalidArgument(f"{where}: permissions {shorten(str(access))} must be of r, w, m")
    rules = linux.setdefault("resources", {}).setdefault("devices", [])
    rules.append({"allow": True, "type": "c" if kind == "u" else kind, "major": int(major),
                  "minor": int(minor), "access": access})


def _mount(spec: dict[str, Any], mount: Any, where: str) -> None:
    if not isinstance(mount, dict) or not isinstance(mount.get("hostPath"), str) \
            or not isinstance(mount.get("containerPath"), str) \
            or not mount["containerPath"].startswith("/"):
        raise InvalidArgument(f"{where}: a mount needs hostPath and an absolute containerPath")
    options = mount.get("options") or ["bind"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise InvalidArgument(f"{where}: mount options must be a list of strings")
    mounts: list[dict[str, Any]] = spec.setdefault("mounts", [])
    destination = os.path.normpath(mount["containerPath"])
    mounts[:] = [m for m in mounts if m.get("destination") != destination]
    mounts.append({"destination": destination, "type": mount.get("type") or "bind",
                   "source": mount["hostPath"], "options": options})


def _hook(spec: dict[str, Any], hook: Any, where: str) -> None:
    if not isinstance(hook, dict) or hook.get("hookName") not in HOOK_NAMES \
            or not isinstance(hook.get("path"), str) or not hook["path"].startswith("/"):
        raise InvalidArgument(f"{where}: a hook needs a hookName of {', '.join(HOOK_NAMES)} "
                              "and an absolute path")
    entry: dict[str, Any] = {"path": hook["path"]}
    for key in ("args", "env"):
        if hook.get(key) is not None:
            if not isinstance(hook[key], list) or not all(isinstance(a, str) for a in hook[key]):
                raise InvalidArgument(f"{where}: hook {key} must be a list of strings")
            entry[key] = hook[key]
    if hook.get("timeout") is not None:
        entry["timeout"] = int(hook["timeout"])
    spec.setdefault("hooks", {}).setdefault(hook["hookName"], []).append(entry)
