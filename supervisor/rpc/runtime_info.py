"""Version, Status, RuntimeConfig, UpdateRuntimeConfig."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from ...proto import api_pb2 as api
from ...proto import net_ops, runtime_ops
from ...proto.contract import Empty, Record, to_wire
from ...proto.errors import BusError, shorten
from ..opclient import OpClient
from ..pool import WorkerPool

log = logging.getLogger(__name__)

# Pools without which no pod can start: if one is FATAL, the runtime is not
# ready, whatever the OCI runtime says.
ESSENTIAL_POOLS = ("image", "storage", "runtime")


class RuntimeInfoService:
    """Version, Status and RuntimeConfig; holds the op client, the pools,
    whose health Status reports, and the metric groups it names."""

    def __init__(self, ops: OpClient, pools: Mapping[str, WorkerPool],
                 metric_groups: tuple[str, ...] = ()) -> None:
        self.ops = ops
        self.pools = pools
        self.metric_groups = metric_groups

    async def version(self, request: api.VersionRequest) -> api.VersionResponse:
        # request.version is the kubelet's API version; every answer is the same.
        result = await self.ops(runtime_ops.VERSION, Empty())
        return api.VersionResponse(
            version=result.version, runtime_name=result.runtime_name,
            runtime_version=result.runtime_version,
            runtime_api_version=result.runtime_api_version)

    async def status(self, request: api.StatusRequest) -> api.StatusResponse:
        # Both halves are asked at once; a dead pool turns its condition false
        # with a reason instead of failing the whole call, because the kubelet
        # reads Status to decide whether the node is ready.
        runtime, network = await asyncio.gather(
            self.ops(runtime_ops.STATUS, Empty()), self.ops(net_ops.STATUS, Empty()),
            return_exceptions=True)
        response = api.StatusResponse(status=api.RuntimeStatus(conditions=[
            _runtime_condition(self.pools, runtime), _network_condition(network)]))
        if isinstance(runtime, runtime_ops.RuntimeStatus):
            for handler in runtime.handlers:
                response.runtime_handlers.add(
                    name=handler.name,
                    features=api.RuntimeHandlerFeatures(
                        recursive_read_only_mounts=handler.recursive_read_only_mounts,
                        user_namespaces=handler.user_namespaces))
            # The default handler is also listed under the empty name, as the
            # kubelet looks it up by "" when a pod names no runtime class.
            default = next((h for h in runtime.handlers
                            if h.name == runtime.default_runtime), None)
            if default is not None:
                response.runtime_handlers.add(name="", features=api.RuntimeHandlerFeatures(
                    recursive_read_only_mounts=default.recursive_read_only_mounts,
                    user_namespaces=default.user_namespaces))
        # Advertised: what the spec builder applies (spec_user.py resolves the
        # Merge and Strict supplemental groups policies). Not advertised:
        # Mount.mount_options, which is ignored.
        response.features.CopyFrom(api.RuntimeFeatures(supplemental_groups_policy=True))
        if request.verbose:
            response.info["runtime"] = json.dumps(_plain(runtime))
            response.info["network"] = json.dumps(_plain(network))
            # A pool started on demand and not yet needed says so ("note"),
            # rather than read as down.
            response.info["pools"] = json.dumps({
                name: p.summary() for name, p in self.pools.items()})
            # The CRI has no feature flag for its metrics RPCs: say here
            # which groups ListPodSandboxMetrics answers (CRI-O's
            # included_pod_metrics).
            response.info["stats"] = json.dumps(
                {"included_pod_metrics": list(self.metric_groups)})
        return response

    async def runtime_config(self, request: api.RuntimeConfigRequest
                             ) -> api.RuntimeConfigResponse:
        result = await self.ops(runtime_ops.RUNTIME_CONFIG, Empty())
        driver = api.SYSTEMD if result.cgroup_driver == "systemd" else api.CGROUPFS
        return api.RuntimeConfigResponse(
            linux=api.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def update_runtime_config(self, request: api.UpdateRuntimeConfigRequest
                                    ) -> api.UpdateRuntimeConfigResponse:
        # The kubelet sends the node's pod CIDR here. Pod addresses come from the
        # CNI config in network_dir (its IPAM ranges), so, as CRI-O does, the
        # runtime takes note and has nothing to change.
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            log.info("The kubelet reports pod CIDR %s; pod IPs follow the CNI config",
                     shorten(cidr))
        return api.UpdateRuntimeConfigResponse()


def _runtime_condition(pools: Mapping[str, WorkerPool],
                       runtime: runtime_ops.RuntimeStatus | BaseException
                       ) -> api.RuntimeCondition:
    for name in ESSENTIAL_POOLS:
        if pools[name].is_fatal():
            return api.RuntimeCondition(
                type="RuntimeReady", status=False, reason=f"{name.capitalize()}PoolFatal",
                message=f"every {name} worker failed to start; see `podvisor status`")
    if isinstance(runtime, BaseException):
        return api.RuntimeCondition(type="RuntimeReady", status=False,
                                    reason="RuntimePoolUnavailable", message=_message(runtime))
    return api.RuntimeCondition(type="RuntimeReady", status=runtime.runtime_ready,
                                reason=runtime.reason, message=runtime.message)


def _network_condition(network: net_ops.NetworkStatus | BaseException
                       ) -> api.RuntimeCondition:
    if isinstance(network, BaseException):
        return api.RuntimeCondition(type="NetworkReady", status=False,
                                    reason="NetworkPoolUnavailable", message=_message(network))
    return api.RuntimeCondition(type="NetworkReady", status=network.network_ready,
                                reason=network.reason, message=network.message)


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, BusError) else f"{type(exc).__name__}: {exc}"


def _plain(value: Record | BaseException) -> Any:
    if isinstance(value, BaseException):
        return {"error": _message(value)}
    return to_wire(value, type(value))
