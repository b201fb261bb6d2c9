"""Ops of the net pool: the bus face of pod networking.

The contracts (arguments, results, what each field means) are declared in
proto/net_ops.py; the worker rebuilds the typed arguments before an op
runs, so a field of the wrong type never gets here. Argument values are
checked in podargs.py.

``NetService`` is built once per worker: it holds the pool's dirs and the
``[network]`` section (``podnet.Layout``), and each op is one of its
methods, named after the op's verb.

This module is the error boundary of the pool: CNI, namespace and record
failures become typed bus errors here and nowhere else. A plugin's own
code, msg and details ride in the error's details and its message, so the
kubelet reads which plugin failed and why. Plugin code 11 ("try again
later") becomes UNAVAILABLE; an unusable config or binary
FAILED_PRECONDITION; any other plugin failure INTERNAL. A pod's counters
that cannot be read (counters.py) are INTERNAL, naming the pod.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ...proto.contract import Empty
from ...proto.errors import FailedPrecondition, Internal, Unavailable
from ...proto.net_ops import (
    ENSURE_NETNS,
    NETWORK_USAGE,
    RECONCILE,
    SETUP,
    STATUS,
    TEARDOWN,
    NetworkStatus,
    PodNetwork,
    Reconcile,
    Reconciled,
    SetupPod,
    TeardownPod,
    TornDown,
)
from ...proto.stats import NetworkQuery, NetworkSamples
from ..base import OpContext, OpTable, Served, serve
from ..records import RecordCorrupt
from . import cni, cniconf, counters, netns, podargs, podnet

# A plugin-status probe must stay short whatever deadline Status carries.
_STATUS_PROBE_TIMEOUT = 5.0
_PRECONDITION_CODES = {cni.ERR_INCOMPATIBLE_VERSION, cni.ERR_INVALID_CONFIG,
                       cni.ERR_PODVISOR_NOT_FOUND, cni.ERR_PODVISOR_EXEC}


class NetService:
    """The net pool's settings (``podnet.Layout``: its dirs and the
    ``[network]`` section), parsed once at worker start, and its ops."""

    def __init__(self, layout: podnet.Layout) -> None:
        self.layout = layout

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> NetService:
        return cls(podnet.Layout.from_settings(settings))

    def ops(self) -> dict[str, Served[Any, Any]]:
        return serve(
            Served(STATUS, self.status),
            Served(ENSURE_NETNS, self.ensure_netns),
            Served(SETUP, self.setup),
            Served(TEARDOWN, self.teardown),
            Served(RECONCILE, self.reconcile),
            Served(NETWORK_USAGE, self.network_usage),
        )

    def status(self, ctx: OpContext, args: Empty) -> NetworkStatus:
        # The network dir is read on every call: the admin or a CNI
        # daemonset may write the config after the daemon started.
        layout = self.layout
        found = cniconf.find_default(layout.network_dir, layout.plugin_dirs)
        if found.config is None:
            return NetworkStatus(network_ready=False, reason="NetworkPluginNotReady",
                                 message=found.problem, config_file="", network_name="",
                                 invalid_configs=found.invalid)
        net = found.config
        try:
            runner = cni.Runner(plugin_dirs=layout.plugin_dirs,
                                deadline=min(ctx.deadline,
                                             time.monotonic() + _STATUS_PROBE_TIMEOUT))
            cni.status(runner, net)
        except cni.PluginError as exc:
            # CNI 1.1 STATUS: a plugin that is not ready makes the network not ready.
            return NetworkStatus(network_ready=False, reason="NetworkPluginNotReady",
                                 message=str(exc), config_file=net.path,
                                 network_name=net.name, invalid_configs=found.invalid)
        return NetworkStatus(network_ready=True, reason="", message="", config_file=net.path,
                             network_name=net.name, invalid_configs=found.invalid)

    def setup(self, ctx: OpContext, args: SetupPod) -> PodNetwork:
        req = podargs.setup_request(args)
        with _bus_errors():
            return podnet.setup(self.layout, req, ctx.deadline, ctx.check)

    def ensure_netns(self, ctx: OpContext, args: SetupPod) -> PodNetwork:
        req = podargs.setup_request(args)
        with _bus_errors():
            return podnet.ensure_netns(self.layout, req, ctx.deadline, ctx.check)

    def teardown(self, ctx: OpContext, args: TeardownPod) -> TornDown:
        pod_id = podargs.pod_id(args.pod_id)
        with _bus_errors():
            return podnet.teardown(self.layout, pod_id, ctx.deadline)

    def reconcile(self, ctx: OpContext, args: Reconcile) -> Reconciled:
        live = podargs.live_pod_ids(args.live_pod_ids)
        with _bus_errors():
            return podnet.reconcile(self.layout, live, ctx.deadline)

    def network_usage(self, ctx: OpContext, args: NetworkQuery) -> NetworkSamples:
        pod_ids = [podargs.pod_id(v, "each of sandbox_ids") for v in args.sandbox_ids]
        with _counter_errors():
            pods = counters.read_pods(self.layout.netns_dir, pod_ids, ctx.check)
        return NetworkSamples(pods=pods)


def build(settings: Mapping[str, Any]) -> OpTable:
    """The op table of one net worker (workers/cli.py calls it once)."""
    return NetService.from_settings(settings).ops()


@contextlib.contextmanager
def _bus_errors() -> Iterator[None]:
    try:
        yield
    except podnet.TeardownFailed as exc:
        details = {"pod_id": exc.pod_id, "failures": [f.as_details() for f in exc.failures]}
        if any(f.code == cni.ERR_TRY_AGAIN_LATER for f in exc.failures):
            raise Unavailable(str(exc), details=details) from exc
        raise Internal(str(exc), details=details) from exc
    except cni.PluginError as exc:
        if exc.code == cni.ERR_TRY_AGAIN_LATER:
            raise Unavailable(str(exc), details=exc.as_details()) from exc
        if exc.code in _PRECONDITION_CODES:
            raise FailedPrecondition(str(exc), details=exc.as_details()) from exc
        raise Internal(str(exc), details=exc.as_details()) from exc
    except cniconf.ConfigInvalid as exc:
        raise FailedPrecondition(str(exc)) from exc
    except RecordCorrupt as exc:
        raise Internal(f"network record unreadable: {exc}") from exc
    except netns.NamespaceError as exc:
        raise Internal(str(exc)) from exc


@contextlib.contextmanager
def _counter_errors() -> Iterator[None]:
    # Separate from _bus_errors: a stats read has no plugin or record to
    # blame, and any OSError (a namespace that cannot be entered, /proc
    # unreadable) or kernel text we cannot parse is the node's fault.
    try:
        yield
    except (OSError, counters.Unparsable) as exc:
        raise Internal(f"reading pod network counters failed: {exc}") from exc
