"""Container RPCs: Create/Start/Stop/Remove/ListContainers, ContainerStatus,
ReopenContainerLog and ExecSync.

CreateContainer is orchestrated here across three pools:

    runtime.sandbox_status     the pod exists and is ready
    image.resolve_image        image id, config and layers (NOT_FOUND if absent)
    runtime.container_reserve  name + "creating" record
    storage.unpack_layer       each layer, once per node (idempotent)
    storage.create_rootfs      overlay of the layers + a writable upper dir
    runtime.container_create   OCI bundle, conmon, runtime create; "created"

with a cleanup stack for failures and the create table for kubelet retries
(see sandbox.py). Everything the kubelet reads back (ContainerStatus,
ListContainers) is shaped by the runtime pool as the CRI message's dict.
"""

from __future__ import annotations

import secrets
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import FailedPrecondition
from ...proto.naming import container_name
from ..container_events import EventHub
from ..creates import CreateTable
from ..opclient import Deadline, OpClient
from .cleanup import CleanupStack
from .layers import ensure_unpacked
from .messages import from_result, to_args
from .metadata import check_metadata


class ContainerService:
    """The container RPCs; holds the op client, the create table and the
    event hub."""

    def __init__(self, ops: OpClient, creates: CreateTable, events: EventHub) -> None:
        self.ops = ops
        self.creates = creates
        self.events = events

    async def create_container(self, request: api.CreateContainerRequest
                               ) -> api.CreateContainerResponse:
        check_metadata("container config", request.config)
        sandbox = await self.ops("runtime.sandbox_status", {"id": request.pod_sandbox_id})
        if sandbox["state"] != "ready":
            raise FailedPrecondition(f"pod sandbox {sandbox['id']} is not ready; containers "
                                     "can only be created in a running pod")
        config = to_args(request.config)
        name = container_name(config.get("metadata", {}), sandbox["config"].get("metadata", {}))

        async def create() -> str:
            return await self._create(sandbox, config)

        async def cleanup(container_id: str) -> None:
            await self._remove(container_id, Deadline.CLEANUP)

        # Keyed by kind too: a pod and a container may have equal names.
        container_id = await self.creates.run(f"container {name}", self.ops.deadline(),
                                                 create, cleanup)
        self.events.emit(container_id, api.CONTAINER_CREATED_EVENT, sandbox["id"])
        return api.CreateContainerResponse(container_id=container_id)

    async def _create(self, sandbox: dict[str, Any], config: dict[str, Any]) -> str:
        ops, create, cleanup = self.ops, Deadline.CREATE, Deadline.CLEANUP
        container_id = secrets.token_hex(32)
        image_name = config.get("image", {}).get("image", "")
        image = await ops("image.resolve_image", {"image": image_name}, create)
        undo = CleanupStack(f"container {container_id}")
        try:
            # Pushed first: a worker that dies inside the reserve may have
            # written the record already.
            undo.push("remove the container record", lambda: ops(
                "runtime.container_remove", {"id": container_id}, cleanup))
            await ops("runtime.container_reserve", {
                "id": container_id, "sandbox_id": sandbox["id"], "config": config,
                "image": {k: image[k] for k in ("id", "repo_tags", "repo_digests")},
            }, create)
            chain = await ensure_unpacked(ops, image["layers"], create)
            undo.push("remove the rootfs", lambda: ops(
                "storage.remove_rootfs", {"container_id": container_id}, cleanup))
            rootfs = await ops("storage.create_rootfs", {
                "container_id": container_id, "layers": chain}, create)
            await ops("runtime.container_create", {
                "id": container_id, "rootfs": rootfs["path"], "image_config": image["config"],
            }, create)
        except BaseException:
            await undo.unwind()
            raise
        return container_id

    async def start_container(self, request: api.StartContainerRequest
                              ) -> api.StartContainerResponse:
        started = await self.ops("runtime.container_start", {"id": request.container_id})
        self.events.emit(started["id"], api.CONTAINER_STARTED_EVENT)
        return api.StartContainerResponse()

    async def stop_container(self, request: api.StopContainerRequest
                             ) -> api.StopContainerResponse:
        # The runtime pool bounds its own wait by the timeout; the call's
        # deadline must leave room for it.
        stopped = await self.ops("runtime.container_stop", {"id": request.container_id,
                                                            "timeout": request.timeout})
        if stopped["found"]:
            self.events.emit(stopped["id"], api.CONTAINER_STOPPED_EVENT, stopped["sandbox_id"])
        return api.StopContainerResponse()

    async def remove_container(self, request: api.RemoveContainerRequest
                               ) -> api.RemoveContainerResponse:
        await self._remove(request.container_id, Deadline.CALL)
        return api.RemoveContainerResponse()

    async def _remove(self, container_id: str, policy: Deadline) -> None:
        # Killed, then the rootfs, then the record: a removal that fails
        # half-way leaves the record, so the kubelet's retry finishes the job.
        stopped = await self.ops("runtime.container_stop", {"id": container_id, "timeout": 0},
                                 policy)
        if not stopped["found"]:
            return  # CRI: removing an absent container succeeds
        await self.ops("storage.remove_rootfs", {"container_id": stopped["id"]}, policy)
        removed = await self.ops("runtime.container_remove", {"id": stopped["id"]}, policy)
        if removed["found"]:
            # STOPPED first (once: the exit watcher may have sent it), then DELETED.
            self.events.emit(removed["id"], api.CONTAINER_STOPPED_EVENT, removed["sandbox_id"])
            self.events.emit(removed["id"], api.CONTAINER_DELETED_EVENT, removed["sandbox_id"])

    async def list_containers(self, request: api.ListContainersRequest
                              ) -> api.ListContainersResponse:
        result = await self.ops("runtime.container_list", {"filter": to_args(request.filter)})
        return from_result({"containers": result}, api.ListContainersResponse)

    async def container_status(self, request: api.ContainerStatusRequest
                               ) -> api.ContainerStatusResponse:
        result = await self.ops("runtime.container_status", {"id": request.container_id,
                                                             "verbose": request.verbose})
        return from_result(result, api.ContainerStatusResponse)

    async def reopen_container_log(self, request: api.ReopenContainerLogRequest
                                   ) -> api.ReopenContainerLogResponse:
        await self.ops("runtime.container_reopen_log", {"id": request.container_id})
        return api.ReopenContainerLogResponse()

    async def exec_sync(self, request: api.ExecSyncRequest) -> api.ExecSyncResponse:
        # The command's own timeout is enforced by podvisor-conmon (it kills
        # and reaps the command); the call's deadline bounds everything else.
        result = await self.ops("runtime.container_exec_sync", {
            "id": request.container_id, "cmd": list(request.cmd), "timeout": request.timeout})
        return api.ExecSyncResponse(stdout=result["stdout"], stderr=result["stderr"],
                                    exit_code=result["exit_code"])
