"""The CNI executor: run a network's plugin chain the way the CNI spec says.

This module knows the protocol (spec 0.3.0 - 1.1.0) and nothing about pods:

- each plugin is exec'd with ``CNI_COMMAND``, ``CNI_CONTAINERID``,
  ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS`` and ``CNI_PATH`` added to our
  environment (iptables-based plugins need our PATH), its config on stdin;
- the config of plugin *n* is its conflist entry plus the list's ``name``
  and ``cniVersion``, the previous plugin's result as ``prevResult``, and a
  ``runtimeConfig`` holding only the capability args the plugin declared in
  ``capabilities`` (libcni ``buildOneConfig``/``injectRuntimeConfig``);
- ADD runs the chain in order, threading each result into the next; DEL runs
  it in reverse with the cached ADD result as ``prevResult`` (0.4.0+);
  STATUS (1.1.0+) asks every plugin if it is ready;
- a plugin that exits non-zero prints ``{code, msg, details}``: that becomes
  a ``PluginError`` carrying all three, the plugin's name and the config
  file, so the kubelet's message says which plugin refused and why.

Unlike libcni, ``delete`` keeps going after a plugin fails and reports every
failure at the end: one broken plugin must not keep the IPAM plugin behind
it from releasing the pod's address.

Every call is bounded by the caller's deadline: a plugin still running at
the deadline is killed and the call raises DeadlineExceeded. Descriptors in
``pass_fds`` (the pod lock) are inherited by the plugin (see workers/locks.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ...proto.errors import DeadlineExceeded

log = logging.getLogger(__name__)

# The protocol versions podvisor speaks. 0.1.0/0.2.0 results have another
# shape (ip4/ip6) and nothing current emits them.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

# Well-known error codes (spec "Error" section) that callers react to.
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
# Codes podvisor itself uses for failures that have no plugin code: the
# spec reserves 0-99 for itself and leaves 100+ to plugins, so pick high.
ERR_PODVISOR_NOT_FOUND = 1001
ERR_PODVISOR_BAD_OUTPUT = 1002
ERR_PODVISOR_EXEC = 1003


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; ValueError if it is not x.y.z."""
    parts = version.split(".")
    if len(parts) != 3:
        raise ValueError(f"CNI version {version!r} is not of the form x.y.z")
    major, minor, patch = (int(p) for p in parts)
    return major, minor, patch


def at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


@dataclass(frozen=True)
class NetworkList:
    """One network: a conflist, or a single .conf treated as a list of one."""

    path: str
    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Invocation:
    """The per-attachment half of a call: who, where, with what args."""

    container_id: str
    netns: str
    ifname: str
    args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)

    def cni_args(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.args)


@dataclass(frozen=True)
class Runner:
    """How to exec plugins: where to find them, until when, what to pass."""

    plugin_dirs: tuple[str, ...]
    deadline: float
    pass_fds: tuple[int, ...] = ()


class PluginError(Exception):
    """A plugin failed; ``code``/``msg``/``details`` are the plugin's own."""

    def __init__(self, plugin: str, command: str, code: int, msg: str,
                 details: str = "", config_path: str = "") -> None:
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details
        self.config_path = config_path
        text = f"CNI plugin {plugin!r} failed {command} (code {code}): {msg}"
        if details:
            text += f": {details}"
        if config_path:
            text += f" [network config {config_path}]"
        super().__init__(text)

    def as_details(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "command": self.command, "cni_code": self.code,
                "cni_msg": self.msg, "cni_details": self.details,
                "config_file": self.config_path}


class PluginNotFound(PluginError):
    def __init__(self, plugin: str, command: str, dirs: Sequence[str],
                 config_path: str = "") -> None:
        super().__init__(plugin, command, ERR_PODVISOR_NOT_FOUND,
                         f"plugin binary {plugin!r} not found in {':'.join(dirs)}",
                         config_path=config_path)


def find_plugin(plugin: str, dirs: Iterable[str]) -> str | None:
    """Path of the first executable named ``plugin`` in ``dirs``."""
    if not plugin or "/" in plugin or plugin in (".", ".."):
        return None
    for directory in dirs:
        candidate = os.path.join(directory, plugin)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def plugin_config(net: NetworkList, index: int, prev_result: dict[str, Any] | None,
                  capability_args: Mapping[str, Any]) -> dict[str, Any]:
    """The stdin config of plugin ``index`` (libcni ``buildOneConfig``)."""
    conf = dict(net.plugins[index])
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    declared = conf.get("capabilities")
    runtime = {}
    if isinstance(declared, dict):
        runtime = {cap: capability_args[cap] for cap, on in declared.items()
                   if on is True and cap in capability_args}
    if runtime:
        conf["runtimeConfig"] = runtime
    return conf


def add(runner: Runner, net: NetworkList, inv: Invocation) -> dict[str, Any]:
    """ADD the whole chain; return the last plugin's result."""
    result: dict[str, Any] | None = None
    for index, plugin in enumerate(net.plugins):
        conf = plugin_config(net, index, result, inv.capability_args)
        out = _exec(runner, net, plugin["type"], "ADD", conf, inv)
        if not isinstance(out, dict):
            raise PluginError(plugin["type"], "ADD", ERR_PODVISOR_BAD_OUTPUT,
                              "ADD printed no result", config_path=net.path)
        result = out
    assert result is not None  # a NetworkList has at least one plugin
    return result


def delete(runner: Runner, net: NetworkList, inv: Invocation,
           cached: dict[str, Any] | None) -> list[PluginError]:
    """DEL the chain in reverse order; return every plugin failure.

    All plugins run even if one fails (module docstring); the caller decides
    what a failure means. Running out of time still raises.
    """
    prev = cached if at_least(net.cni_version, "0.4.0") else None
    failures: list[PluginError] = []
    for index in reversed(range(len(net.plugins))):
        plugin = net.plugins[index]["type"]
        conf = plugin_config(net, index, prev, inv.capability_args)
        try:
            _exec(runner, net, plugin, "DEL", conf, inv)
        except PluginError as exc:
            log.warning("DEL of %s by plugin %s failed: %s", inv.container_id, plugin, exc)
            failures.append(exc)
    return failures


def status(runner: Runner, net: NetworkList) -> bool:
    """STATUS every plugin (1.1.0+); False if the version has no STATUS."""
    if not at_least(net.cni_version, "1.1.0"):
        return False
    for index, plugin in enumerate(net.plugins):
        conf = plugin_config(net, index, None, {})
        _exec(runner, net, plugin["type"], "STATUS", conf, None)
    return True


def plugin_versions(binary: str) -> tuple[str, ...]:
    """Versions the plugin binary says it supports (VERSION command).

    Memoised per (path, mtime, size): a status probe every few seconds
    should not exec every plugin every time, yet an upgraded binary is
    asked again.
    """
    st = os.stat(binary)
    return _plugin_versions(binary, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _plugin_versions(binary: str, _mtime_ns: int, _size: int) -> tuple[str, ...]:
    runner = Runner(plugin_dirs=(os.path.dirname(binary),), deadline=time.monotonic() + 10)
    net = NetworkList(path="", name="", cni_version=SUPPORTED_VERSIONS[-1], plugins=())
    out = _exec(runner, net, os.path.basename(binary), "VERSION",
                {"cniVersion": SUPPORTED_VERSIONS[-1]}, None)
    versions = out.get("supportedVersions") if isinstance(out, dict) else None
    if not isinstance(versions, list):
        raise PluginError(os.path.basename(binary), "VERSION", ERR_PODVISOR_BAD_OUTPUT,
                          "VERSION printed no supportedVersions list")
    return tuple(str(v) for v in versions)


def _exec(runner: Runner, net: NetworkList, plugin: str, command: str,
          conf: dict[str, Any], inv: Invocation | None) -> Any:
    binary = find_plugin(plugin, runner.plugin_dirs)
    if binary is None:
        raise PluginNotFound(plugin, command, runner.plugin_dirs, net.path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env["CNI_COMMAND"] = command
    env["CNI_PATH"] = os.pathsep.join(runner.plugin_dirs)
    if inv is not None:
        env.update(CNI_CONTAINERID=inv.container_id, CNI_NETNS=inv.netns,
                   CNI_IFNAME=inv.ifname, CNI_ARGS=inv.cni_args())
    timeout = runner.deadline - time.monotonic()
    if timeout <= 0:
        raise DeadlineExceeded(f"no time left to run CNI plugin {plugin} {command}")
    started = time.monotonic()
    try:
        proc = _run_plugin(binary, json.dumps(conf).encode(), env, timeout, runner.pass_fds)
    except subprocess.TimeoutExpired:
        raise DeadlineExceeded(
            f"CNI plugin {plugin} {command} did not finish before the deadline") from None
    except OSError as exc:
        raise PluginError(plugin, command, ERR_PODVISOR_EXEC, f"cannot exec {binary}: {exc}",
                          config_path=net.path) from exc
    log.debug("CNI %s %s took %.3fs (exit %d)", plugin, command,
              time.monotonic() - started, proc.returncode)
    if proc.returncode != 0:
        raise _error_from(plugin, command, proc, net.path)
    if not proc.stdout.strip():
        return None
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise PluginError(plugin, command, ERR_PODVISOR_BAD_OUTPUT,
                          f"output is not JSON: {_snippet(proc.stdout)}",
                          config_path=net.path) from None


def _run_plugin(binary: str, stdin: bytes, env: dict[str, str], timeout: float,
                pass_fds: tuple[int, ...]) -> subprocess.CompletedProcess[bytes]:
    """Run one plugin in a process group of its own.

    On a timeout the whole group is killed, not just the plugin: a child it
    started (portmap's iptables) inherits the pod lock's fd, and one that
    outlived the kill would hold the lock on a file the caller then unlinks.
    """
    with subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, pass_fds=pass_fds, cwd="/",
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess([binary], proc.returncode, out, err)


def _error_from(plugin: str, command: str, proc: subprocess.CompletedProcess[bytes],
                config_path: str) -> PluginError:
    try:
        err = json.loads(proc.stdout)
    except ValueError:
        err = None
    if isinstance(err, dict) and "code" in err:
        try:
            code = int(err["code"])
        except (TypeError, ValueError):
            code = ERR_PODVISOR_BAD_OUTPUT
        return PluginError(plugin, command, code, str(err.get("msg", "")),
                           str(err.get("details", "")), config_path)
    # Not the spec's error shape: the best clue is whatever it printed.
    text = _snippet(proc.stderr) or _snippet(proc.stdout) or "no output"
    return PluginError(plugin, command, ERR_PODVISOR_BAD_OUTPUT,
                       f"exited with status {proc.returncode}: {text}", config_path=config_path)


def _snippet(data: bytes, limit: int = 500) -> str:
    return data.decode("utf-8", "replace").strip()[:limit]


def result_ips(result: Mapping[str, Any]) -> list[str]:
    """Container IPs of a result (0.3.0+ shape), IPv4 first, without prefix.

    An address whose ``interface`` points at a host-side interface (no
    ``sandbox``) is not the pod's. Order within a family is the plugin's;
    IPv4 first is containerd's default ``ip_pref`` and what kubelet's
    dual-stack expects when the cluster is IPv4-primary.
    """
    interfaces = result.get("interfaces") or []
    v4: list[str] = []
    v6: list[str] = []
    for entry in result.get("ips") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            continue
        index = entry.get("interface")
        if (isinstance(index, int) and 0 <= index < len(interfaces)
                and not interfaces[index].get("sandbox")):
            continue
        ip = entry["address"].split("/", 1)[0]
        (v6 if ":" in ip else v4).append(ip)
    return v4 + v6
