"""Pod sandbox RPCs: Run/Stop/RemovePodSandbox, PodSandboxStatus,
ListPodSandbox.

RunPodSandbox is orchestrated here, one narrow op per pool:

    runtime.sandbox_reserve  name + "creating" record
    net.setup                namespace, CNI ADD        (not for host network)
    runtime.sandbox_start    ipc/uts pins, files, cgroup, infra; "ready"

with a cleanup stack that undoes the steps done when a later one fails,
and a create table (creates.py) that lets a kubelet retry join a create
that outlived its first deadline.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import FailedPrecondition, NotFound
from ...proto.naming import sandbox_name
from ..container_events import EventHub
from ..creates import CreateTable
from ..opclient import Deadline, OpClient
from .cleanup import CleanupStack
from .layers import ensure_unpacked
from .messages import STATES, fill_metadata, from_result, sandbox_status, to_args
from .metadata import check_metadata


class SandboxService:
    """The pod sandbox RPCs; holds the op client, the create table and the
    event hub."""

    def __init__(self, ops: OpClient, creates: CreateTable, events: EventHub) -> None:
        self.ops = ops
        self.creates = creates
        self.events = events

    async def run_pod_sandbox(self, request: api.RunPodSandboxRequest
                              ) -> api.RunPodSandboxResponse:
        check_metadata("pod sandbox config", request.config)
        config = to_args(request.config)
        name = sandbox_name(config.get("metadata", {}))

        async def create() -> str:
            return await self._create(config, request.runtime_handler)

        async def cleanup(sandbox_id: str) -> None:
            await self._stop_and_remove(sandbox_id, Deadline.CLEANUP)

        # Keyed by kind too: a pod and a container may have equal names.
        sandbox_id = await self.creates.run(f"pod sandbox {name}", self.ops.deadline(),
                                               create, cleanup)
        # As containerd does, sandbox lifecycle events carry the sandbox's id.
        self.events.emit(sandbox_id, api.CONTAINER_CREATED_EVENT, sandbox_id)
        self.events.emit(sandbox_id, api.CONTAINER_STARTED_EVENT, sandbox_id)
        return api.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def _create(self, config: dict[str, Any], handler: str) -> str:
        ops, create, cleanup = self.ops, Deadline.CREATE, Deadline.CLEANUP
        sandbox_id = secrets.token_hex(32)
        undo = CleanupStack(f"pod sandbox {sandbox_id}")
        try:
            # Pushed first: a worker that dies inside the reserve may have
            # written the record already.
            undo.push("remove the sandbox record", lambda: ops(
                "runtime.sandbox_remove", {"id": sandbox_id}, cleanup))
            undo.push("stop the sandbox", lambda: ops(
                "runtime.sandbox_stop", {"id": sandbox_id}, cleanup))
            reserved = await ops("runtime.sandbox_reserve", {
                "id": sandbox_id, "config": config, "runtime_handler": handler}, create)
            # Host-network pods skip CNI, but the net pool still answers with
            # the node's IPs, which is what the kubelet expects to see for them.
            meta = config["metadata"]
            undo.push("tear the pod network down", lambda: ops(
                "net.teardown", {"pod_id": sandbox_id}, cleanup))
            net = await ops("net.setup", {
                "pod_id": sandbox_id, "name": meta["name"], "namespace": meta["namespace"],
                "uid": meta["uid"], "port_mappings": config.get("port_mappings", []),
                "dns": config.get("dns_config"), "host_network": _host_network(config),
                "cgroup_parent": config.get("linux", {}).get("cgroup_parent", ""),
            }, create)
            netns_path, ips = net["netns_path"] or None, net["ips"]
            infra_image = None
            if reserved["pause_image"]:
                undo.push("remove the pause rootfs", lambda: ops(
                    "storage.remove_rootfs", {"container_id": sandbox_id}, cleanup))
                infra_image = await self._pause_rootfs(reserved["pause_image"], sandbox_id)
            await ops("runtime.sandbox_start", {
                "id": reserved["id"], "netns_path": netns_path, "ips": ips,
                "infra_image": infra_image}, create)
        except BaseException:
            await undo.unwind()
            raise
        return sandbox_id

    async def _pause_rootfs(self, pause_image: str, sandbox_id: str) -> dict[str, Any]:
        """Pull the configured pause image if absent and mount a rootfs of it."""
        ops, create = self.ops, Deadline.CREATE
        try:
            image = await ops("image.resolve_image", {"image": pause_image}, create)
        except NotFound:
            await ops("image.pull_image", {"image": {"image": pause_image}}, create)
            image = await ops("image.resolve_image", {"image": pause_image}, create)
        chain = await ensure_unpacked(ops, image["layers"], create)
        rootfs = await ops("storage.create_rootfs", {"container_id": sandbox_id,
                                                     "layers": chain}, create)
        config = (image.get("config") or {}).get("config") or {}
        args = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        if not args:
            raise FailedPrecondition(f"pause image {pause_image} has no Entrypoint or Cmd")
        return {"rootfs": rootfs["path"], "args": args}

    async def stop_pod_sandbox(self, request: api.StopPodSandboxRequest
                               ) -> api.StopPodSandboxResponse:
        await self._stop(request.pod_sandbox_id, Deadline.CALL)
        return api.StopPodSandboxResponse()

    async def _stop(self, sandbox_id: str, policy: Deadline) -> dict[str, Any] | None:
        """Kill the pod's containers, stop the sandbox, release its network.

        CRI: "If there are any running containers in the sandbox, they must be
        forcibly terminated"; stopping an absent sandbox is not an error.
        """
        stopped = await self.ops("runtime.sandbox_stop_containers", {"id": sandbox_id}, policy)
        if not stopped["found"]:
            return None
        result = await self.ops("runtime.sandbox_stop", {"id": stopped["id"]}, policy)
        await self.ops("net.teardown", {"pod_id": stopped["id"]}, policy)
        if result["stopped"]:
            self.events.emit(stopped["id"], api.CONTAINER_STOPPED_EVENT, stopped["id"])
        return dict(result)

    async def remove_pod_sandbox(self, request: api.RemovePodSandboxRequest
                                 ) -> api.RemovePodSandboxResponse:
        await self._stop_and_remove(request.pod_sandbox_id, Deadline.CALL)
        return api.RemovePodSandboxResponse()

    async def _stop_and_remove(self, sandbox_id: str, policy: Deadline) -> None:
        stopped = await self._stop(sandbox_id, policy)
        if stopped is None:
            return  # CRI: removing an absent sandbox succeeds
        full_id = stopped["id"]
        ops = self.ops
        # Half-created containers too ("all"): they must not keep the pod.
        containers = await ops("runtime.container_list", {"sandbox_id": full_id, "all": True},
                               policy)
        for container in containers:
            # Rootfs before record, so a failure leaves what a retry needs.
            await ops("storage.remove_rootfs", {"container_id": container["id"]}, policy)
            await ops("runtime.container_remove", {"id": container["id"]}, policy)
        # The pause image's rootfs, if the pod had one (absent is fine).
        await ops("storage.remove_rootfs", {"container_id": full_id}, policy)
        await ops("runtime.sandbox_remove", {"id": full_id}, policy)
        self.events.emit(full_id, api.CONTAINER_DELETED_EVENT, full_id)

    async def pod_sandbox_status(self, request: api.PodSandboxStatusRequest
                                 ) -> api.PodSandboxStatusResponse:
        record = await self.ops("runtime.sandbox_status", {"id": request.pod_sandbox_id})
        response = api.PodSandboxStatusResponse(status=sandbox_status(record),
                                                timestamp=time.time_ns())
        # The evented PLEG reads the pod's containers from this answer too.
        for member in await self.ops("runtime.container_list", {"sandbox_id": record["id"]}):
            with contextlib.suppress(NotFound):
                status = await self.ops("runtime.container_status", {"id": member["id"]})
                response.containers_statuses.append(from_result(status["status"],
                                                                api.ContainerStatus))
        if request.verbose:
            response.info["info"] = json.dumps({
                "netns_path": record["netns_path"], "hostname": record["hostname"],
                "cgroup_parent": record["cgroup_parent"], "infra": record["infra"],
                "namespaces": record["ns"], "shm": record["shm"], "files": record["files"],
                "runtime_handler": record["runtime_handler"]})
        return response

    async def list_pod_sandbox(self, request: api.ListPodSandboxRequest
                               ) -> api.ListPodSandboxResponse:
        records = await self.ops("runtime.sandbox_list", {})
        response = api.ListPodSandboxResponse()
        flt = request.filter
        for record in records:
            if not _matches(record, flt):
                continue
            config = record["config"]
            item = response.items.add(
                id=record["id"], state=STATES[record["state"]], created_at=record["created_at"],
                labels=config.get("labels", {}), annotations=config.get("annotations", {}),
                runtime_handler=record["runtime_handler"])
            fill_metadata(item.metadata, config.get("metadata", {}))
        return response


def _host_network(config: Mapping[str, Any]) -> bool:
    options = config.get("linux", {}).get("security_context", {}).get("namespace_options", {})
    return bool(options.get("network") == "NODE")


def _matches(record: Mapping[str, Any], flt: api.PodSandboxFilter) -> bool:
    if flt.id and not record["id"].startswith(flt.id):
        return False
    if flt.HasField("state") and STATES[record["state"]] != flt.state.state:
        return False
    labels = record["config"].get("labels", {})
    return all(labels.get(k) == v for k, v in flt.label_selector.items())
