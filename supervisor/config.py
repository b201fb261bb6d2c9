"""The daemon's configuration: TOML file, drop-ins, command-line flags.

Role: turn ``/etc/podvisor/podvisor.toml``, the drop-ins in
``podvisor.toml.d/*.toml`` and the CRI-O-named flags into one frozen
``Config``, or fail with a ``ConfigError`` that names the file (or "command
line") and the dotted key. No other module parses TOML or knows a default.

Invariants:

- Every key has exactly one default: its dataclass field below, documented by
  the docstring under the field. Key and flag names are CRI-O's wherever
  CRI-O has the same setting, so operators' habits carry over.
- Layers apply in order: main file, drop-ins in lexical order, then flags.
  Each layer overrides key by key; a table in a later layer never erases the
  keys of an earlier one, so a drop-in can add a runtime handler or change
  one key of one.
- Each value is validated when its layer is read, so an error names the file
  that holds it even if a later layer would have overridden it.
- Defaults derived from ``runroot`` (``api.listen``, each handler's
  ``runtime_root``) follow the effective runroot unless a layer set them.
  That is tracked by which keys were set, never by comparing with literals.
- ``load(dump(c)) == c`` and ``from_dict(to_dict(c)) == c``.

Nothing here keeps state between calls or touches anything but the paths it
is given (or the two default paths, which may be absent).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import posixpath
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..proto.limits import SUN_PATH_MAX

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DEFAULT_CONFIG_PATH = "/etc/podvisor/podvisor.toml"
DEFAULT_CONFIG_DIR = "/etc/podvisor/podvisor.toml.d"
DEFAULT_ROOT = "/var/lib/podvisor"
DEFAULT_RUNROOT = "/run/podvisor"
COMMAND_LINE = "command line"
ROOT_TABLE = "podvisor"

# CRI-O's log_level set; "warning" is accepted as Python's spelling of warn.
LOG_LEVELS = ("fatal", "panic", "error", "warn", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
CGROUP_MANAGERS = ("cgroupfs", "systemd")
RUNTIME_TYPES = ("oci",)
# One streaming worker: it owns the port and the URLs it issued.
STREAM_WORKERS = 1
# Python logging has no trace level; logs.py may give this number a name.
TRACE_LEVEL = 5

# Built-in handlers: name -> runtime_path (Debian's paths for runc and crun).
BUILTIN_RUNTIMES: Mapping[str, str] = {"runc": "/usr/sbin/runc", "crun": "/usr/bin/crun"}

# gRPC keeps message sizes in an int32.
_GRPC_MAX_MSG = 2**31 - 1
# A RuntimeClass handler must be a DNS-1123 label (Kubernetes validates it so).
_HANDLER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

# Field metadata keys: a leaf carries its check, the handler table a marker.
# A sub-table is a field whose default_factory is its dataclass.
_CHECK = "podvisor.check"
_HANDLERS = "podvisor.handlers"

_T = TypeVar("_T", bound="DataclassInstance")
_Check = Callable[[object], object]
_KeyPath = tuple[str, ...]


class ConfigError(Exception):
    """A configuration problem, as ``<file or "command line">: <message>``.

    The message names the dotted key when there is one (also in ``key``):
    ``podvisor.workers.image: expected an integer from 1 to 64, got "two"``.
    """

    def __init__(self, source: str, message: str, key: str | None = None) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.key = key


class _Invalid(Exception):
    """Raised by a check; the reader adds the key, the source and the value."""


# --- checks: each returns the normalized value or raises _Invalid --------------


def _int_range(lo: int, hi: int | None = None) -> _Check:
    expected = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"

    def check(value: object) -> object:
        # bool is an int subclass; `true` is never a count.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected {expected}")
        if value < lo or (hi is not None and value > hi):
            raise _Invalid(f"expected {expected}")
        return value

    return check


def _seconds(lo: float, *, inclusive: bool) -> _Check:
    expected = f"a number of seconds {'>=' if inclusive else '>'} {lo:g}"

    def check(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"expected {expected}")
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < lo or (seconds == lo and not inclusive):
            raise _Invalid(f"expected {expected}")
        return seconds

    return check


def _fraction(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 < float(value) <= 1:
        raise _Invalid("expected a number above 0 and at most 1")
    return float(value)


def _one_of(choices: tuple[str, ...]) -> _Check:
    def check(value: object) -> object:
        if not isinstance(value, str) or value not in choices:
            raise _Invalid(f"expected one of {'|'.join(choices)}")
        return value

    return check


def _text(*, nonempty: bool) -> _Check:
    def check(value: object) -> object:
        if not isinstance(value, str) or (nonempty and not value):
            raise _Invalid("expected a non-empty string" if nonempty else "expected a string")
        return value

    return check


def _abs_path(value: object) -> object:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise _Invalid("expected an absolute path")
    # Normalized so that derived paths never read "/run/podvisor//runc".
    return posixpath.normpath(value)


# conmon's sockets live at <runroot>/c/<64-hex container id>/<name>, the
# longest name being "console" (workers/runtime/layout.py, conmon/contract.py),
# and a unix socket path holds at most SUN_PATH_MAX bytes.
RUNROOT_MAX = SUN_PATH_MAX - len("/c/") - 64 - len("/console")


def _runroot(value: object) -> object:
    path = _abs_path(value)
    assert isinstance(path, str)
    if len(path.encode()) > RUNROOT_MAX:
        raise _Invalid(f"at most {RUNROOT_MAX} bytes: conmon's unix sockets live under it "
                       f"and their paths are limited to {SUN_PATH_MAX} bytes")
    return path


def _optional_path(value: object) -> object:
    return "" if value == "" else _abs_path(value)


def _bool(value: object) -> object:
    if not isinstance(value, bool):
        raise _Invalid("expected true or false")
    return value


def _str_list(item: _Check, expected: str) -> _Check:
    def check(value: object) -> object:
        # A tuple is accepted too: flags and Config values hand in tuples.
        if not isinstance(value, list | tuple):
            raise _Invalid(f"expected {expected}")
        try:
            return tuple(str(item(v)) for v in value)
        except _Invalid:
            raise _Invalid(f"expected {expected}") from None

    return check


def _conmon_cgroup(value: object) -> object:
    # CRI-O: "pod" (conmon joins the pod's cgroup), or a place of its own;
    # which form fits the cgroup manager is checked in _check_relations.
    if isinstance(value, str) and (value == "pod" or value.endswith(".slice")):
        return value
    if isinstance(value, str) and value.startswith("/"):
        return posixpath.normpath(value)
    raise _Invalid('expected "pod", an absolute cgroup path or a systemd slice name')


def _key(default: object, check: _Check) -> Any:
    """A leaf key: its default (MISSING for none) and the check its values pass."""
    if default is MISSING:
        return field(metadata={_CHECK: check})
    return field(default=default, metadata={_CHECK: check})


def _default_listen(runroot: str) -> str:
    return posixpath.join(runroot, "podvisor.sock")


def _default_runtime_root(runroot: str, name: str) -> str:
    return posixpath.join(runroot, name)


# --- the schema: one frozen dataclass per TOML table ---------------------------


@dataclass(frozen=True)
class ApiConfig:
    """``[podvisor.api]``: the CRI gRPC endpoint."""

    listen: str = _key(_default_listen(DEFAULT_RUNROOT), _abs_path)
    """CRI unix socket (CRI-O: listen). Default: ``<runroot>/podvisor.sock``."""
    grpc_max_send_msg_size: int = _key(80 * 1024 * 1024, _int_range(1, _GRPC_MAX_MSG))
    """Largest gRPC message sent, in bytes. Default 83886080 (80 MiB, as CRI-O).
    The bus to the workers follows: its frames may have the larger of the two
    limits plus 64 KiB (at least 64 MiB)."""
    grpc_max_recv_msg_size: int = _key(80 * 1024 * 1024, _int_range(1, _GRPC_MAX_MSG))
    """Largest gRPC message received, in bytes. Default 83886080 (80 MiB, as CRI-O).
    A larger one is refused RESOURCE_EXHAUSTED by gRPC; one that fits here
    fits on the bus too (see grpc_max_send_msg_size)."""
    request_timeout: float = _key(120.0, _seconds(0, inclusive=False))
    """Seconds a request may take when the caller set no gRPC deadline. Default 120."""
    status_cache_size: int = _key(4096, _int_range(0, 1_000_000))
    """PodSandboxStatus, ContainerStatus, ImageStatus and ListImages answers
    the supervisor keeps in memory, kept true by every change it sends and by
    the runtime pool's change feed; 0 turns the cache off. Default 4096."""


@dataclass(frozen=True)
class RuntimeHandler:
    """``[podvisor.runtime.runtimes.NAME]`` (CRI-O: ``[crio.runtime.runtimes.NAME]``)."""

    runtime_path: str = _key(MISSING, _abs_path)
    """OCI runtime binary. Default: /usr/sbin/runc for runc, /usr/bin/crun for
    crun; required for any other handler."""
    runtime_root: str = _key(MISSING, _abs_path)
    """The runtime's state dir (its --root). Default: ``<runroot>/<name>``."""
    runtime_type: str = _key("oci", _one_of(RUNTIME_TYPES))
    """Only "oci" (CRI-O also has vm and pod). Default "oci"."""


def _builtin_runtimes(runroot: str) -> dict[str, RuntimeHandler]:
    return {
        name: RuntimeHandler(runtime_path=path, runtime_root=_default_runtime_root(runroot, name))
        for name, path in BUILTIN_RUNTIMES.items()
    }


@dataclass(frozen=True)
class RuntimeConfig:
    """``[podvisor.runtime]``: cgroups and the OCI runtime handlers."""

    cgroup_manager: str = _key("cgroupfs", _one_of(CGROUP_MANAGERS))
    """cgroupfs|systemd (CRI-O name). Default "cgroupfs"."""
    default_runtime: str = _key("crun", _text(nonempty=True))
    """Handler used when a pod names none; must be a key of ``runtimes``.
    Default "crun": it starts and deletes a container in about a third of
    runc's time, and a pod's start is CPU-bound. runc stays the handler
    "runc"."""
    conmon_cgroup: str = _key("pod", _conmon_cgroup)
    """"pod", or a cgroup path (cgroupfs) or slice (systemd) for every conmon
    (CRI-O name). Default "pod"."""
    cdi_spec_dirs: tuple[str, ...] = _key(
        ("/etc/cdi", "/var/run/cdi"), _str_list(_abs_path, "a list of absolute paths"))
    """Directories of CDI device specs, the later ones overriding (CRI-O
    name). Default ["/etc/cdi", "/var/run/cdi"]."""
    monitor_zygote: bool = _key(True, _bool)
    """Fork each container's monitor from one preloaded process (the monitor
    zygote), sharing its pages; false execs each one. Either way a monitor
    outlives every podvisor process. Default true."""
    seccomp_use_default_when_empty: bool = _key(False, _bool)
    """A container that names no seccomp profile at all gets RuntimeDefault
    (CRI-O name); else it runs unconfined, as the CRI says. The kubelet
    always names one. Default false."""
    # Typed read-only, kept a plain dict so dataclasses.asdict, copy and
    # pickle still work on a Config (a MappingProxyType breaks all three).
    runtimes: Mapping[str, RuntimeHandler] = field(
        default_factory=lambda: _builtin_runtimes(DEFAULT_RUNROOT),
        metadata={_HANDLERS: True},
    )
    """Handlers by name. Default: runc and crun. Files add handlers or change
    keys of one; none can be removed."""


@dataclass(frozen=True)
class ImageConfig:
    """``[podvisor.image]``: pulls and image policy."""

    pause_image: str = _key("", _text(nonempty=False))
    """Infra container image. Default "": podvisor builds its own catatonit rootfs."""
    signature_policy: str = _key("/etc/containers/policy.json", _abs_path)
    """containers-policy.json(5) file. Default /etc/containers/policy.json."""
    registries_conf: str = _key("/etc/containers/registries.conf", _abs_path)
    """containers-registries.conf(5) file. Default /etc/containers/registries.conf."""
    pull_progress_timeout: float = _key(300.0, _seconds(0, inclusive=True))
    """Seconds a pull may go without receiving a byte before it fails; 0 turns
    the check off, as in CRI-O (a dead connection still times out after 600 s
    without data). Default 300."""
    pinned_images: tuple[str, ...] = _key(
        (), _str_list(_text(nonempty=True), "a list of non-empty strings")
    )
    """Images never garbage-collected by the kubelet. Default: none."""
    max_parallel_downloads: int = _key(3, _int_range(1, 64))
    """Layers one pull downloads at once. Default 3, as containerd's
    max_concurrent_downloads (CRI-O has no key for it)."""


@dataclass(frozen=True)
class NetworkConfig:
    """``[podvisor.network]``: CNI."""

    network_dir: str = _key("/etc/cni/net.d", _abs_path)
    """Where CNI network configs are read. Default /etc/cni/net.d."""
    plugin_dirs: tuple[str, ...] = _key(
        ("/opt/cni/bin", "/usr/lib/cni"), _str_list(_abs_path, "a list of absolute paths")
    )
    """CNI plugin binaries, searched in order. Default ["/opt/cni/bin", "/usr/lib/cni"]."""


@dataclass(frozen=True)
class MetricsConfig:
    """``[podvisor.metrics]``: the Prometheus and status endpoint."""

    enable_metrics: bool = _key(True, _bool)
    """Serve /metrics and the JSON status. Default true."""
    metrics_host: str = _key("127.0.0.1", _text(nonempty=True))
    """Address the endpoint binds. Default 127.0.0.1."""
    metrics_port: int = _key(9090, _int_range(0, 65535))
    """Port; 0 picks a free one (the daemon writes the bound address to
    ``<runroot>/health.addr``). Default 9090."""


@dataclass(frozen=True)
class StreamConfig:
    """``[podvisor.stream]``: the streaming server behind Exec, Attach and
    PortForward (CRI-O: the ``stream_*`` keys of ``[crio.api]``)."""

    address: str = _key("127.0.0.1", _text(nonempty=True))
    """Address the streaming server binds; the URLs name it (127.0.0.1 when
    it is 0.0.0.0, ::1 when it is ::). Default 127.0.0.1."""
    port: int = _key(0, _int_range(0, 65535))
    """Port; 0 picks a free one, kept across restarts of the streaming
    worker while it stays free. Default 0."""
    tls_cert: str = _key("", _optional_path)
    """PEM certificate for https/wss URLs; "" (the default) serves plain HTTP."""
    tls_key: str = _key("", _optional_path)
    """PEM key of ``tls_cert``; set both or neither."""
    token_ttl: float = _key(60.0, _seconds(0, inclusive=False))
    """Seconds a URL stays usable before its first (and only) use. Default 60."""
    max_tokens: int = _key(1000, _int_range(1, 100000))
    """URLs issued and not yet used; more is RESOURCE_EXHAUSTED. Default 1000."""
    stream_idle_timeout: float = _key(4 * 3600.0, _seconds(0, inclusive=False))
    """Seconds a session may pass with no data either way before it is
    closed (the kubelet's default). Default 14400."""


# The metric groups podvisor collects (CRI-O's names for
# included_pod_metrics); CRI-O's "hugetlb" and "pressure" are not among them.
METRIC_GROUPS = ("cpu", "disk", "diskIO", "memory", "network", "oom", "process", "spec")


def _metric_groups(value: object) -> object:
    expected = f'a list of metric groups from {", ".join(METRIC_GROUPS)}, or ["all"]'
    groups = _str_list(_one_of(("all", *METRIC_GROUPS)), expected)(value)
    assert isinstance(groups, tuple)
    if "all" in groups:
        if len(groups) != 1:
            raise _Invalid('"all" must be the only element')
        return METRIC_GROUPS
    return tuple(dict.fromkeys(groups))


@dataclass(frozen=True)
class StatsConfig:
    """``[podvisor.stats]``: container and pod stats, and the CRI metrics
    the kubelet serves at /metrics/cadvisor (CRI-O: ``[crio.stats]``)."""

    included_pod_metrics: tuple[str, ...] = _key(METRIC_GROUPS, _metric_groups)
    """Metric groups ListMetricDescriptors and ListPodSandboxMetrics answer:
    any of cpu, disk, diskIO, memory, network, oom, process, spec, or
    ["all"]; container_last_seen is always there. Default: all of them."""
    layer_usage_interval: float = _key(10.0, _seconds(0, inclusive=False))
    """Seconds between two measures of one container's writable layer
    (longer when the CPU budget cannot measure every layer that often).
    Default 10."""
    layer_usage_budget: float = _key(0.2, _fraction)
    """The share of one CPU the background measuring may take, above 0 and
    at most 1: after each walk it rests for the walk's time times
    (1 - budget) / budget. Default 0.2."""


@dataclass(frozen=True)
class WorkersConfig:
    """``[podvisor.workers]``: podvisor's own, the worker pools and their supervision."""

    # One process per pool is the default: each worker serves up to
    # max_inflight ops at once on its threads, long waits hold no thread, and
    # a killed worker is restarted at once (a fork from the zygote, or from a
    # new one after an idle exit), so a second process buys a 2-core node
    # little but its memory (README, "Pool sizes").
    image: int = _key(1, _int_range(1, 64))
    """Processes in the image pool. Default 1."""
    storage: int = _key(1, _int_range(1, 64))
    """Processes in the storage pool. Default 1."""
    runtime: int = _key(1, _int_range(1, 64))
    """Processes in the runtime pool. Default 1."""
    net: int = _key(1, _int_range(1, 64))
    """Processes in the net pool. Default 1."""
    fork_from_zygote: bool = _key(True, _bool)
    """Fork workers from one process that imported every pool's modules, so
    they share those pages; false starts each by fork+exec. Default true."""
    stream_on_demand: bool = _key(True, _bool)
    """Start the stream worker with the first Exec, Attach or PortForward, so
    a node that never streams holds none (it stays once started); false
    starts it with the daemon. Default true."""
    zygote_idle_exit: float = _key(60.0, _seconds(0, inclusive=True))
    """Seconds the zygote waits for another fork before it exits and gives its
    own pages back (the next spawn starts a new one); 0 keeps it. Default 60."""
    max_inflight: int = _key(16, _int_range(1, 1024))
    """Requests one worker serves at once. Default 16."""
    heartbeat_interval: float = _key(0.5, _seconds(0, inclusive=False))
    """Seconds between heartbeats, both ways. Default 0.5."""
    heartbeat_liveness: int = _key(3, _int_range(1))
    """Missed heartbeats before a worker is declared dead. Default 3."""
    backoff_base: float = _key(0.5, _seconds(0, inclusive=False))
    """First restart delay after a fast failure; a restart after a long run is
    immediate. Default 0.5."""
    backoff_cap: float = _key(30.0, _seconds(0, inclusive=False))
    """Longest restart delay; at least backoff_base. Default 30."""
    startsecs: float = _key(1.0, _seconds(0, inclusive=True))
    """A worker exiting sooner than this after start failed fast. Default 1."""
    fatal_after: int = _key(5, _int_range(1))
    """Consecutive fast failures that make a slot FATAL. Default 5."""
    start_timeout: float = _key(15.0, _seconds(0, inclusive=False))
    """Seconds a worker may take to send READY. Default 15."""
    overrun_grace: float = _key(10.0, _seconds(0, inclusive=True))
    """A worker still busy with a request this long past its deadline is killed.
    Default 10."""
    stop_timeout: float = _key(10.0, _seconds(0, inclusive=True))
    """Seconds between SIGTERM and SIGKILL at shutdown. Default 10."""

    def pool_sizes(self) -> dict[str, int]:
        """Processes per pool, keyed by pool name."""
        return {"image": self.image, "storage": self.storage,
                "runtime": self.runtime, "net": self.net, "stream": STREAM_WORKERS}


@dataclass(frozen=True)
class Config:
    """``[podvisor]``: the whole effective configuration."""

    root: str = _key(DEFAULT_ROOT, _abs_path)
    """Persistent state (CRI-O: root). Default /var/lib/podvisor."""
    runroot: str = _key(DEFAULT_RUNROOT, _runroot)
    """Volatile state: sockets, locks (CRI-O: runroot). Default /run/podvisor."""
    log_level: str = _key("info", _one_of(LOG_LEVELS))
    """fatal|panic|error|warn|warning|info|debug|trace (CRI-O's set). Default "info"."""
    log_format: str = _key("text", _one_of(LOG_FORMATS))
    """text|json. Default "text"."""
    api: ApiConfig = field(default_factory=ApiConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)


# --- reading layers ------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    """A value some layer set, and where; None marks a declared handler table."""

    value: object
    source: str


# Key paths are relative to [podvisor]: ("api", "listen").
_Settings = dict[_KeyPath, _Setting]


def _section_class(spec: Field[Any]) -> type[DataclassInstance] | None:
    factory = spec.default_factory
    if isinstance(factory, type) and is_dataclass(factory):
        return factory
    return None


def _dotted(path: _KeyPath) -> str:
    return ".".join((ROOT_TABLE, *path))


def _show(value: object) -> str:
    if isinstance(value, Mapping):
        return "a table"
    return json.dumps(value, default=str, ensure_ascii=False)


def _unknown(source: str, dotted: str) -> ConfigError:
    return ConfigError(source, f"unknown key {dotted}", dotted)


def _read_tree(tree: Mapping[str, object], source: str, into: _Settings) -> None:
    for name, value in tree.items():
        if name != ROOT_TABLE:
            raise _unknown(source, name)
        _read_section(Config, (), value, source, into)


def _read_section(
    cls: type[DataclassInstance], prefix: _KeyPath, table: object, source: str, into: _Settings
) -> None:
    if not isinstance(table, Mapping):
        raise ConfigError(source, f"{_dotted(prefix)}: expected a table, got {_show(table)}",
                          _dotted(prefix))
    known: dict[str, Field[Any]] = {f.name: f for f in fields(cls)}
    for name, value in table.items():
        path = (*prefix, name)
        spec = known.get(name)
        if spec is None:
            raise _unknown(source, _dotted(path))
        section = _section_class(spec)
        if section is not None:
            _read_section(section, path, value, source, into)
        elif _HANDLERS in spec.metadata:
            _read_handlers(path, value, source, into)
        else:
            into[path] = _Setting(_checked(spec, path, value, source), source)


def _read_handlers(path: _KeyPath, table: object, source: str, into: _Settings) -> None:
    if not isinstance(table, Mapping):
        raise ConfigError(source, f"{_dotted(path)}: expected a table, got {_show(table)}",
                          _dotted(path))
    for name, handler in table.items():
        handler_path = (*path, name)
        if not _HANDLER_NAME.fullmatch(name):
            raise ConfigError(
                source, f"{_dotted(handler_path)}: a handler name must be a lowercase "
                "DNS label (RuntimeClass handler rules)", _dotted(handler_path))
        # Record the table itself, so an empty [..runtimes.NAME] still declares
        # a handler (and fails for want of runtime_path if not built in).
        into[handler_path] = _Setting(None, source)
        _read_section(RuntimeHandler, handler_path, handler, source, into)


def _checked(spec: Field[Any], path: _KeyPath, value: object, source: str) -> object:
    check: _Check = spec.metadata[_CHECK]
    try:
        return check(value)
    except _Invalid as e:
        raise ConfigError(source, f"{_dotted(path)}: {e}, got {_show(value)}",
                          _dotted(path)) from None


def _read_file(path: str, into: _Settings, *, required: bool) -> None:
    try:
        with open(path, "rb") as f:
            tree = tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(path, "no such file") from None
        return
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"not UTF-8: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, f"invalid TOML: {e}") from None
    _read_tree(tree, path, into)


def _drop_ins(directory: str, *, required: bool) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        if required:
            raise ConfigError(directory, "no such directory") from None
        return []
    except OSError as e:
        raise ConfigError(directory, f"cannot list: {e.strerror or e}") from None
    paths = (os.path.join(directory, name) for name in sorted(names) if name.endswith(".toml"))
    return [p for p in paths if os.path.isfile(p)]


def _read_overrides(overrides: Mapping[str, object], into: _Settings) -> None:
    # Each flag becomes a one-key tree so it takes the files' path exactly.
    for dotted, value in overrides.items():
        tree: object = value
        for part in reversed(dotted.split(".")):
            tree = {part: tree}
        assert isinstance(tree, dict)
        _read_tree(tree, COMMAND_LINE, into)


# --- building the Config -------------------------------------------------------


def _handler_names(path: _KeyPath, settings: _Settings) -> list[str]:
    declared = {key[len(path)] for key in settings if len(key) > len(path)
                and key[: len(path)] == path}
    return sorted(declared | set(BUILTIN_RUNTIMES))


def _derived_defaults(settings: _Settings) -> dict[_KeyPath, object]:
    """Defaults that depend on other keys, for the keys no layer set."""
    runroot = settings[("runroot",)].value if ("runroot",) in settings else DEFAULT_RUNROOT
    assert isinstance(runroot, str)
    derived: dict[_KeyPath, object] = {("api", "listen"): _default_listen(runroot)}
    runtimes: _KeyPath = ("runtime", "runtimes")
    for name in _handler_names(runtimes, settings):
        handler = (*runtimes, name)
        derived[(*handler, "runtime_root")] = _default_runtime_root(runroot, name)
        if name in BUILTIN_RUNTIMES:
            derived[(*handler, "runtime_path")] = BUILTIN_RUNTIMES[name]
        elif (*handler, "runtime_path") not in settings:
            key = _dotted((*handler, "runtime_path"))
            raise ConfigError(settings[handler].source,
                              f"{key}: required for a handler that is not built in", key)
    return derived


def _construct(
    cls: type[_T], prefix: _KeyPath, settings: _Settings, derived: Mapping[_KeyPath, object]
) -> _T:
    kwargs: dict[str, object] = {}
    for spec in fields(cls):
        path = (*prefix, spec.name)
        section = _section_class(spec)
        if section is not None:
            kwargs[spec.name] = _construct(section, path, settings, derived)
        elif _HANDLERS in spec.metadata:
            kwargs[spec.name] = {
                name: _construct(RuntimeHandler, (*path, name), settings, derived)
                for name in _handler_names(path, settings)
            }
        elif path in settings:
            kwargs[spec.name] = settings[path].value
        elif path in derived:
            kwargs[spec.name] = derived[path]
        # Otherwise the field's own default applies.
    return cls(**kwargs)


def _source_of(settings: _Settings, *paths: _KeyPath) -> tuple[_KeyPath, str]:
    """The first of paths some layer set, and its source (defaults if none)."""
    for path in paths:
        if path in settings:
            return path, settings[path].source
    return paths[0], "defaults"


def _check_relations(config: Config, settings: _Settings) -> None:
    """Checks that span keys, reported at the key a layer set."""
    runtime = config.runtime
    if runtime.default_runtime not in runtime.runtimes:
        path, source = _source_of(settings, ("runtime", "default_runtime"))
        raise ConfigError(
            source, f"{_dotted(path)}: no handler {_show(runtime.default_runtime)} in "
            f"podvisor.runtime.runtimes (have {', '.join(sorted(runtime.runtimes))})",
            _dotted(path))
    cgroup = runtime.conmon_cgroup
    # As CRI-O: cgroupfs places conmon by path, systemd by slice.
    fits = cgroup == "pod" or (
        cgroup.endswith(".slice") if runtime.cgroup_manager == "systemd" else cgroup[0] == "/")
    if not fits:
        path, source = _source_of(settings, ("runtime", "conmon_cgroup"),
                                  ("runtime", "cgroup_manager"))
        want = "a slice name" if runtime.cgroup_manager == "systemd" else "an absolute path"
        raise ConfigError(
            source, f"{_dotted(path)}: with cgroup_manager {_show(runtime.cgroup_manager)}, "
            f'conmon_cgroup must be "pod" or {want}, got {_show(cgroup)}', _dotted(path))
    stream = config.stream
    if bool(stream.tls_cert) != bool(stream.tls_key):
        path, source = _source_of(settings, ("stream", "tls_cert"), ("stream", "tls_key"))
        raise ConfigError(source, f"{_dotted(path)}: set tls_cert and tls_key together",
                          _dotted(path))
    workers = config.workers
    if workers.backoff_cap < workers.backoff_base:
        path, source = _source_of(settings, ("workers", "backoff_cap"),
                                  ("workers", "backoff_base"))
        raise ConfigError(
            source, f"{_dotted(path)}: backoff_cap ({workers.backoff_cap:g}) must be at "
            f"least backoff_base ({workers.backoff_base:g})", _dotted(path))


def _build(settings: _Settings) -> Config:
    config = _construct(Config, (), settings, _derived_defaults(settings))
    _check_relations(config, settings)
    return config


# --- public API ----------------------------------------------------------------


def load(
    config_path: str | None, config_dir: str | None, overrides: Mapping[str, object]
) -> Config:
    """Read the main file, its drop-ins and the flag overrides into a Config.

    ``None`` selects the default path, which may be absent; a path given
    explicitly must exist. ``overrides`` maps dotted keys
    ("podvisor.api.listen") to typed values, checked like file values.
    Raises ConfigError.
    """
    settings: _Settings = {}
    _read_file(config_path if config_path is not None else DEFAULT_CONFIG_PATH, settings,
               required=config_path is not None)
    directory = config_dir if config_dir is not None else DEFAULT_CONFIG_DIR
    for path in _drop_ins(directory, required=config_dir is not None):
        _read_file(path, settings, required=True)
    _read_overrides(overrides, settings)
    return _build(settings)


def from_dict(data: Mapping[str, object], source: str = "settings") -> Config:
    """Rebuild a Config from ``to_dict`` output (e.g. in a worker), validating it."""
    settings: _Settings = {}
    _read_section(Config, (), data, source, settings)
    return _build(settings)


def to_dict(config: Config) -> dict[str, object]:
    """The ``[podvisor]`` table as plain JSON-able dicts, lists and scalars."""
    return _plain(config)


def _plain(obj: DataclassInstance) -> dict[str, object]:
    out: dict[str, object] = {}
    for spec in fields(obj):
        value = getattr(obj, spec.name)
        if _section_class(spec) is not None:
            out[spec.name] = _plain(value)
        elif _HANDLERS in spec.metadata:
            out[spec.name] = {name: _plain(h) for name, h in sorted(value.items())}
        elif isinstance(value, tuple):
            out[spec.name] = list(value)
        else:
            out[spec.name] = value
    return out


def dump(config: Config) -> str:
    """The effective configuration as TOML that ``load`` reads back to an equal Config."""
    lines = ["# podvisor effective configuration"]
    _emit_table((ROOT_TABLE,), to_dict(config), lines)
    return "\n".join(lines) + "\n"


def python_log_level(name: str) -> int:
    """The Python logging level for one of LOG_LEVELS (CRI-O's names)."""
    levels = {
        "fatal": logging.CRITICAL, "panic": logging.CRITICAL, "error": logging.ERROR,
        "warn": logging.WARNING, "warning": logging.WARNING, "info": logging.INFO,
        "debug": logging.DEBUG, "trace": TRACE_LEVEL,
    }
    try:
        return levels[name]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}; expected one of {LOG_LEVELS}") from None


# --- TOML output: only the types the schema uses --------------------------------


def _emit_table(path: _KeyPath, table: Mapping[str, object], lines: list[str]) -> None:
    leaves = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    # A table holding only sub-tables needs no header of its own; an empty
    # one does, or it would vanish.
    if leaves or not tables:
        lines.append("")
        lines.append(f"[{'.'.join(_toml_key(p) for p in path)}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in leaves)
    for name, sub in tables:
        assert isinstance(sub, Mapping)
        _emit_table((*path, name), sub, lines)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        # repr is the shortest string that reads back to the same float.
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
            "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            # TOML basic strings forbid raw control characters.
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# --- command-line flags --------------------------------------------------------

# (flag, dotted key, metavar, help); the dotted key is also the argparse dest,
# so these never collide with the caller's own arguments.
_VALUE_FLAGS: tuple[tuple[str, str, str, str], ...] = (
    ("--listen", "podvisor.api.listen", "PATH", "CRI socket path"),
    ("--root", "podvisor.root", "DIR", "persistent state directory"),
    ("--runroot", "podvisor.runroot", "DIR", "volatile state directory"),
    ("--log-level", "podvisor.log_level", "LEVEL", "|".join(LOG_LEVELS)),
    ("--log-format", "podvisor.log_format", "FORMAT", "|".join(LOG_FORMATS)),
    ("--cgroup-manager", "podvisor.runtime.cgroup_manager", "MANAGER",
     "|".join(CGROUP_MANAGERS)),
    ("--default-runtime", "podvisor.runtime.default_runtime", "NAME",
     "handler used when a pod names none"),
    ("--cni-config-dir", "podvisor.network.network_dir", "DIR", "CNI network configs"),
    ("--registries-conf", "podvisor.image.registries_conf", "FILE",
     "containers-registries.conf(5) file"),
    ("--signature-policy", "podvisor.image.signature_policy", "FILE",
     "containers-policy.json(5) file"),
    ("--pause-image", "podvisor.image.pause_image", "IMAGE",
     'infra image ("" for the built-in catatonit rootfs)'),
    ("--metrics-host", "podvisor.metrics.metrics_host", "HOST", "metrics endpoint address"),
)
_PLUGIN_DIR_KEY = "podvisor.network.plugin_dirs"
_ENABLE_METRICS_KEY = "podvisor.metrics.enable_metrics"
_METRICS_PORT_KEY = "podvisor.metrics.metrics_port"
_FLAG_KEYS = frozenset(
    [key for _, key, _, _ in _VALUE_FLAGS] + [_PLUGIN_DIR_KEY, _ENABLE_METRICS_KEY,
                                               _METRICS_PORT_KEY])


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add CRI-O-named flags; every one defaults to None (not given).

    ``--config`` and ``--config-dir`` land in ``config`` and ``config_dir``
    for the caller to pass to ``load``; the rest are read by ``flag_overrides``.
    """
    group = parser.add_argument_group("configuration (override the files)")
    group.add_argument("--config", metavar="FILE",
                       help=f"main config file (default {DEFAULT_CONFIG_PATH})")
    group.add_argument("--config-dir", metavar="DIR",
                       help=f"drop-in directory (default {DEFAULT_CONFIG_DIR})")
    for flag, key, metavar, text in _VALUE_FLAGS:
        group.add_argument(flag, dest=key, metavar=metavar, help=f"{text} ({key})")
    group.add_argument("--cni-plugin-dir", dest=_PLUGIN_DIR_KEY, metavar="DIR",
                       action="append",
                       help=f"CNI plugin directory; repeat it, the list replaces the "
                       f"configured one ({_PLUGIN_DIR_KEY})")
    group.add_argument("--enable-metrics", dest=_ENABLE_METRICS_KEY,
                       action=argparse.BooleanOptionalAction,
                       help=f"serve metrics and status ({_ENABLE_METRICS_KEY})")
    group.add_argument("--metrics-port", dest=_METRICS_PORT_KEY, metavar="PORT", type=int,
                       help=f"metrics port, 0 for any free one ({_METRICS_PORT_KEY})")


def flag_overrides(namespace: argparse.Namespace) -> dict[str, object]:
    """The flags given on the command line, as ``load`` overrides."""
    return {key: value for key, value in vars(namespace).items()
            if key in _FLAG_KEYS and value is not None}
