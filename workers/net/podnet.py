"""Pod networks: setup, teardown and start-up reconcile of one pod.

This is where the namespace (netns.py), the CNI chain (cni.py), the record
(store.py) and the pod lock (workers/locks.py) meet; ops.py only maps
errors, and podargs.py checks argument values.

Ordering (why nothing leaks whatever instant a worker dies)
    setup:    lock -> record(setting_up) -> netns -> ADD -> record(ready)
    in two calls (the supervisor starts the pod's infra in the namespace
    while the chain runs):
      ensure_netns: lock -> record(netns) -> netns
      setup:        lock -> record(setting_up) -> ADD -> record(ready)
    teardown: lock -> DEL (cached result) -> remove netns -> drop record
    The record is written before anything is allocated and dropped only
    after every plugin's DEL succeeded, so any pod that may hold an address
    or a veth has a record, and a later teardown or reconcile finishes the
    job with the config the ADD used. A failed setup unwinds itself the
    same way before it raises. The pod's lock file lives as long as its
    record: whoever drops the record unlinks it (workers/locks.py).

Idempotence
    A second setup of a ready pod returns the cached answer (the bus or the
    supervisor's own retry of RunPodSandbox reaches here with the same id).
    A setup that finds a half-done record tears it down first, except a
    record of ``ensure_netns`` whose namespace is there: no plugin has run
    for it, so the setup goes on from the ADD. Teardown of
    an unknown pod succeeds (CRI: StopPodSandbox must be idempotent).

Concurrency
    Every step runs under the pod's flock and under no other lock, so pods
    set up in parallel only meet inside the plugins, which lock for
    themselves (bridge, host-local's dataDir lock, portmap's iptables lock).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ...proto.errors import FailedPrecondition
from ...proto.net_ops import PodNetwork, Reconciled, TornDown
from ..locks import ObjectLock, acquire
from ..records import RecordCorrupt, RecordDir
from . import cni, cniconf, netns, nodeip, store
from .podargs import IFNAME, SetupRequest

log = logging.getLogger(__name__)

# Unwinding a failed setup must not be cut short by the caller's deadline
# that made it fail; it gets at least this long (the supervisor may still
# kill the worker, and then the record lets teardown finish the job).
CLEANUP_GRACE = 30.0


@dataclass(frozen=True)
class Layout:
    """Where the net pool keeps things, and where it finds CNI."""

    netns_dir: str
    lock_dir: str
    records_dir: str
    network_dir: str
    plugin_dirs: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Layout:
        network = settings["network"]
        return cls(
            netns_dir=os.path.join(settings["runroot"], "netns"),
            lock_dir=os.path.join(settings["runroot"], "net", "locks"),
            records_dir=os.path.join(settings["root"], "net", "pods"),
            network_dir=network["network_dir"],
            plugin_dirs=tuple(network["plugin_dirs"]),
        )

    @property
    def records(self) -> RecordDir:
        """One record per pod (store.py says what it holds, and why here)."""
        return RecordDir(self.records_dir)


class TeardownFailed(Exception):
    """DEL failed for some plugin; the record stays so it is retried."""

    def __init__(self, pod_id: str, failures: list[cni.PluginError]) -> None:
        self.pod_id = pod_id
        self.failures = failures
        super().__init__(f"network teardown of pod {pod_id} is incomplete: "
                         + "; ".join(str(f) for f in failures))


def setup(layout: Layout, req: SetupRequest, deadline: float,
          check: Callable[[], None] = lambda: None) -> PodNetwork:
    """Give the pod its network; return what the caller needs of it.

    ``check`` is called between steps and raises when the caller is gone.
    """
    lock = _lock(layout, req.pod_id, deadline)
    try:
        return _setup_locked(layout, req, deadline, lock, check)
    finally:
        # A setup that failed unwound itself and dropped the record: the
        # lock file goes with it, as after a teardown.
        lock.release(unlink=_load_quiet(layout, req.pod_id) is None)


def ensure_netns(layout: Layout, req: SetupRequest, deadline: float,
                 check: Callable[[], None] = lambda: None) -> PodNetwork:
    """Only the pod's namespace, for ``setup`` to finish later: the answer
    has its path and no addresses. A pod set up already answers as setup."""
    lock = _lock(layout, req.pod_id, deadline)
    try:
        record = _usable_record(layout, req, deadline, lock)
        if record is None:
            record = _make_netns(layout, req, deadline, lock, check)
        return _network(record)
    finally:
        lock.release(unlink=_load_quiet(layout, req.pod_id) is None)


def _usable_record(layout: Layout, req: SetupRequest, deadline: float,
                   lock: ObjectLock) -> dict[str, Any] | None:
    """The pod's record if setup can go on from it (ready, or a namespace
    of ``ensure_netns``); None once whatever else was there is torn down."""
    path = netns.path_for(layout.netns_dir, req.pod_id)
    try:
        record = layout.records.load(req.pod_id)
    except RecordCorrupt as exc:
        log.error("Replacing the unreadable network record of pod %s: %s", req.pod_id, exc)
        _teardown_locked(layout, req.pod_id, None, _cleanup_deadline(deadline), lock,
                         corrupt=True)
        record = None
    if record is None and os.path.lexists(path):
        # A namespace with no record (records wiped by hand): free it first.
        _teardown_locked(layout, req.pod_id, None, _cleanup_deadline(deadline), lock)
    if record is not None:
        if _ready(record):
            log.info("Network of pod %s is already set up", req.pod_id)
            return record
        if _netns_made(record) and not req.host_network:
            return record
        if (record.get("state") == store.SETTING_UP and not req.host_network
                and netns.exists(record["netns_path"])):
            # A chain cut short (a worker that died mid-ADD, setup retried):
            # DEL what it may hold, but keep the namespace, which the pod's
            # infra may run in already (RunPodSandbox overlaps the two).
            _undo_chain(layout, record, deadline, lock)
            return record
        # Half-done by a worker that died, or its namespace vanished:
        # release what it may hold before starting over.
        log.warning("Pod %s has a stale network record (state %s); tearing it down first",
                    req.pod_id, record.get("state"))
        _teardown_locked(layout, req.pod_id, record, _cleanup_deadline(deadline), lock)
    return None


def _setup_locked(layout: Layout, req: SetupRequest, deadline: float,
                  lock: ObjectLock, check: Callable[[], None]) -> PodNetwork:
    record = _usable_record(layout, req, deadline, lock)
    if record is not None and _ready(record):
        return _network(record)
    if req.host_network:
        # hostNetwork pods get no namespace and no CNI; the record only lets
        # teardown and reconcile treat every pod alike.
        record = {"pod_id": req.pod_id, "host_network": True, "state": store.READY,
                  "netns_path": ""}
        layout.records.save(req.pod_id, record)
        return _network(record)

    if record is None:
        record = _make_netns(layout, req, deadline, lock, check, store.SETTING_UP)
    path = record["netns_path"]
    net = cniconf.from_record(record["config"], record["config_file"])
    try:
        if record["state"] != store.SETTING_UP:
            # Saved before the first plugin runs: a worker that dies in the
            # chain leaves a record that the next setup tears down first.
            record["state"] = store.SETTING_UP
            layout.records.save(req.pod_id, record)
        check()
        result = cni.add(_runner(layout, deadline, lock), net, _invocation(record, path))
        # A caller that gave up during ADD will never learn of this pod:
        # unwind rather than leave a network nobody will tear down.
        check()
        record.update(state=store.READY, result=result)
        layout.records.save(req.pod_id, record)
    except BaseException:
        _unwind(layout, req.pod_id, record, deadline, lock, "setup")
        raise
    log.info("Set up network of pod %s: %s", req.pod_id, cni.result_ips(result))
    return _network(record)


def _make_netns(layout: Layout, req: SetupRequest, deadline: float, lock: ObjectLock,
                check: Callable[[], None], state: str = store.NETNS) -> dict[str, Any]:
    """Write the pod's record in ``state`` (``netns``: no plugin will run
    before the record says otherwise; ``setting_up``: the caller runs the
    chain next) and make its namespace; on a failure, nothing of it is left."""
    if req.host_network:
        raise FailedPrecondition(f"pod {req.pod_id} uses the host's network; it gets no "
                                 "namespace")
    found = cniconf.find_default(layout.network_dir, layout.plugin_dirs)
    if found.config is None:
        raise FailedPrecondition(f"network plugin is not ready: {found.problem}")
    net = found.config
    path = netns.path_for(layout.netns_dir, req.pod_id)
    record = {
        "pod_id": req.pod_id, "host_network": False, "state": state,
        "netns_path": path, "config_file": net.path, "config": net.raw,
        "ifname": IFNAME, "cni_args": [list(kv) for kv in req.cni_args],
        "capability_args": req.capability_args, "created_at": time.time(),
    }
    # Persist first: from here on the pod may hold resources (docstring).
    layout.records.save(req.pod_id, record)
    try:
        check()
        netns.create(path, req.userns_path or None)
    except BaseException:
        _unwind(layout, req.pod_id, record, deadline, lock, "network namespace")
        raise
    return record


def _unwind(layout: Layout, pod_id: str, record: dict[str, Any], deadline: float,
            lock: ObjectLock, what: str) -> None:
    """Tear down what a failed step left; a teardown that fails too keeps
    the record, for a later teardown or reconcile (logged, not raised: the
    step's own error is the caller's)."""
    log.warning("The %s of pod %s failed; unwinding", what, pod_id)
    try:
        _teardown_locked(layout, pod_id, record, _cleanup_deadline(deadline), lock)
    except Exception:
        log.exception("Unwinding the %s of pod %s failed; its record stays for teardown "
                      "or reconcile", what, pod_id)


def teardown(layout: Layout, pod_id: str, deadline: float) -> TornDown:
    """Release everything the pod holds; idempotent."""
    lock = _lock(layout, pod_id, deadline)
    done = False
    try:
        corrupt = False
        try:
            record = layout.records.load(pod_id)
        except RecordCorrupt as exc:
            # Keep going: the namespace and today's config still let DEL run.
            log.error("Ignoring the unreadable network record of pod %s: %s", pod_id, exc)
            record, corrupt = None, True
        found = record is not None or corrupt or os.path.lexists(
            netns.path_for(layout.netns_dir, pod_id))
        _teardown_locked(layout, pod_id, record, deadline, lock, corrupt=corrupt)
        done = True
        return TornDown(pod_id=pod_id, found=found)
    finally:
        # Done: nothing is left to serialise, so the lock file goes too.
        lock.release(unlink=done)


def _teardown_locked(layout: Layout, pod_id: str, record: dict[str, Any] | None,
                     deadline: float, lock: ObjectLock, corrupt: bool = False) -> None:
    path = netns.path_for(layout.netns_dir, pod_id)
    failures: list[cni.PluginError] = []
    if record is None or not record.get("host_network"):
        # A record of ensure_netns: no plugin has run, so none needs a DEL.
        may_hold = (record is not None and record.get("state") != store.NETNS) \
            or (record is None and (corrupt or os.path.lexists(path)))
        net = _network_for_teardown(layout, pod_id, record) if may_hold else None
        if net is not None:
            # CNI spec: DEL tolerates a missing namespace; CNI_NETNS is then
            # left empty, which is how plugins are told it is gone.
            inv = _invocation(record or {}, path if netns.exists(path) else "", pod_id)
            cached = record.get("result") if record else None
            failures = cni.delete(_runner(layout, deadline, lock), net, inv, cached)
    # The namespace goes even if a plugin failed: the pod is stopping, and
    # the veth dies with it. The record stays so DEL is retried.
    netns.remove(path)
    if failures:
        raise TeardownFailed(pod_id, failures)
    layout.records.delete(pod_id)
    log.info("Tore down network of pod %s", pod_id)


def _undo_chain(layout: Layout, record: dict[str, Any], deadline: float,
                lock: ObjectLock) -> None:
    """DEL of a chain cut short; the record goes back to ``netns``."""
    net = cniconf.from_record(record["config"], record["config_file"])
    failures = cni.delete(_runner(layout, _cleanup_deadline(deadline), lock), net,
                          _invocation(record, record["netns_path"]), record.get("result"))
    if failures:
        raise TeardownFailed(record["pod_id"], failures)
    record["state"] = store.NETNS
    record.pop("result", None)
    layout.records.save(record["pod_id"], record)
    log.info("Undid the chain a setup of pod %s left half done", record["pod_id"])


def _network_for_teardown(layout: Layout, pod_id: str,
                          record: dict[str, Any] | None) -> cni.NetworkList:
    if record is not None and isinstance(record.get("config"), dict):
        return cniconf.from_record(record["config"], str(record.get("config_file", "")))
    # A namespace without a readable record: DEL with today's config is the
    # best chance to free what the pod holds (plugins DEL by container id).
    found = cniconf.find_default(layout.network_dir, layout.plugin_dirs)
    if found.config is None:
        # Dropping the pod now could leak its lease; fail so it is retried.
        raise FailedPrecondition(
            f"cannot tear down the network of pod {pod_id}: it has no usable record "
            f"and {found.problem}")
    return found.config


def reconcile(layout: Layout, live: set[str], deadline: float) -> Reconciled:
    """Tear down every pod network with no live pod; report vanished ones.

    The caller (the daemon at start) passes every pod id it knows; no setup
    of a pod outside ``live`` may be running meanwhile.
    """
    layout.records.remove_stale_temps()
    known = set(layout.records.ids())
    known.update(netns.list_names(layout.netns_dir))
    # A pod id is a safe file name, so its lock file is "<pod id>.lock".
    known.update(n[: -len(".lock")] for n in _listdir(layout.lock_dir) if n.endswith(".lock"))
    torn_down: list[str] = []
    failed: dict[str, str] = {}
    for pod_id in sorted(known - live):
        try:
            teardown(layout, pod_id, deadline)
            torn_down.append(pod_id)
        except Exception as exc:  # one stuck pod must not stop the others
            log.error("Reconcile could not tear down pod %s: %s", pod_id, exc)
            failed[pod_id] = str(exc)
    missing = []
    for pod_id in sorted(live):
        record = _load_quiet(layout, pod_id)
        if record is not None and not _ready(record):
            missing.append(pod_id)
    return Reconciled(torn_down=torn_down, failed=failed, not_ready=missing)


def _ready(record: Mapping[str, Any]) -> bool:
    """Set up to the end, and its namespace still there."""
    return record.get("state") == store.READY and bool(
        record.get("host_network") or netns.exists(record["netns_path"]))


def _netns_made(record: Mapping[str, Any]) -> bool:
    """A record of ``ensure_netns`` (no plugin has run), its namespace there."""
    return record.get("state") == store.NETNS and netns.exists(record["netns_path"])


def _network(record: Mapping[str, Any]) -> PodNetwork:
    """What setup answers for a pod whose network is ready."""
    if record.get("host_network"):
        return PodNetwork(pod_id=record["pod_id"], host_network=True, netns_path="",
                          ips=nodeip.node_ips(), network_name="", config_file="")
    return PodNetwork(
        pod_id=record["pod_id"], host_network=False, netns_path=record["netns_path"],
        ips=cni.result_ips(record.get("result") or {}),
        network_name=str((record.get("config") or {}).get("name", "")),
        config_file=str(record.get("config_file", "")))


def _invocation(record: Mapping[str, Any], path: str,
                pod_id: str | None = None) -> cni.Invocation:
    return cni.Invocation(
        container_id=pod_id or record["pod_id"], netns=path,
        ifname=record.get("ifname", IFNAME),
        args=tuple((str(k), str(v)) for k, v in record.get("cni_args", [])),
        capability_args=record.get("capability_args") or {})


def _lock(layout: Layout, pod_id: str, deadline: float) -> ObjectLock:
    return acquire(layout.lock_dir, pod_id, deadline, f"pod {pod_id}",
                   holder="another network setup or teardown")


def _runner(layout: Layout, deadline: float, lock: ObjectLock) -> cni.Runner:
    return cni.Runner(plugin_dirs=layout.plugin_dirs, deadline=deadline,
                      pass_fds=(lock.fd,))


def _cleanup_deadline(deadline: float) -> float:
    return max(deadline, time.monotonic() + CLEANUP_GRACE)


def _load_quiet(layout: Layout, pod_id: str) -> dict[str, Any] | None:
    try:
        return layout.records.load(pod_id)
    except RecordCorrupt:
        return None


def _listdir(path: str) -> Iterable[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return ()
