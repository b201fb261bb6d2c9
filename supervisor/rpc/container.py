"""Container RPCs: Create/Start/Stop/Remove/List/StreamContainers, ContainerStatus,
ReopenContainerLog, ExecSync and UpdateContainerResources.

CreateContainer is orchestrated here across three pools:

    image.resolve_image        image id, config and layers (NOT_FOUND if absent)
    runtime.container_reserve  the pod is ready; name + "creating" record
    storage.unpack_layers      beside the reserve: each layer, once per node
                               (idempotent)
    storage.create_rootfs      overlay of the layers + a writable upper dir
    image.resolve_image, storage.unpack_layers, storage.create_rootfs
                               each image volume (CRI Mount.image), the same way
    runtime.container_create   OCI bundle, conmon, runtime create; "created"

with a cleanup stack for failures and the create table for kubelet retries
(see sandbox.py). The config goes to the runtime pool whole, serialized;
everything the kubelet reads back (ContainerStatus, ListContainers) the
runtime pool builds as the CRI message, and this module only parses.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

from ...proto import api_pb2 as api
from ...proto import image_ops, runtime_ops, storage_ops
from ...proto.idmap import IdMap
from ..creates import CreateTable
from ..opclient import Deadline, OpClient
from ..status_cache import Answer, StatusCache, container_answer, container_key
from .chunks import chunked
from .cleanup import CleanupStack, both
from .layers import ensure_unpacked
from .metadata import check_metadata


class ContainerService:
    """The container RPCs; holds the op client, the create table (their
    events come from the runtime pool's change feed) and the status cache."""

    def __init__(self, ops: OpClient, creates: CreateTable, cache: StatusCache) -> None:
        self.ops = ops
        self.creates = creates
        self.cache = cache

    async def create_container(self, request: api.CreateContainerRequest
                               ) -> api.CreateContainerResponse:
        check_metadata("container config", request.config)

        async def create() -> runtime_ops.ContainerReserved:
            return await self._create(request.pod_sandbox_id, request.config)

        async def cleanup(created: runtime_ops.ContainerReserved) -> None:
            await self._remove(created.id, Deadline.CLEANUP)

        # Keyed on the pod and the metadata the kubelet's retry repeats (the
        # container's name is the runtime pool's to derive, at reserve), and
        # by kind: a pod and a container never share a key.
        meta = request.config.metadata
        key = f"container {request.pod_sandbox_id}/{meta.name}/{meta.attempt}"
        created = await self.creates.run(key, self.ops.deadline(), create, cleanup)
        return api.CreateContainerResponse(container_id=created.id)

    async def _create(self, sandbox_id: str, config: api.ContainerConfig
                      ) -> runtime_ops.ContainerReserved:
        ops, create, cleanup = self.ops, Deadline.CREATE, Deadline.CLEANUP
        container_id = secrets.token_hex(32)
        image_name = config.image.image
        image = await ops(image_ops.RESOLVE_IMAGE, image_ops.ResolveImage(image=image_name),
                          create)
        undo = CleanupStack(f"container {container_id}")
        try:
            # Pushed first: a worker that dies inside the reserve may have
            # written the record already.
            undo.push("remove the container record", lambda: ops(
                runtime_ops.CONTAINER_REMOVE, runtime_ops.Ref(id=container_id), cleanup))
            # The layers (present since the pull, as a rule: a no-op) are
            # ensured beside the reserve, which they do not depend on; an
            # unpack for a create the reserve refuses undoes nothing.
            reserved, chain = await both(
                ops(runtime_ops.CONTAINER_RESERVE, runtime_ops.ContainerReserve(
                    id=container_id, sandbox_id=sandbox_id, config=config.SerializeToString(),
                    image=runtime_ops.ImageRef(id=image.id, repo_tags=image.repo_tags,
                                               repo_digests=image.repo_digests)), create),
                ensure_unpacked(ops, image.layers, create))
            undo.push("remove the rootfs", lambda: ops(
                storage_ops.REMOVE_ROOTFS, storage_ops.RemoveRootfs(container_id=container_id),
                cleanup))
            # A pod with its own user namespace has the layers idmapped.
            rootfs = await ops(storage_ops.CREATE_ROOTFS, storage_ops.CreateRootfs(
                container_id=container_id, layers=chain, idmap=reserved.idmap), create)
            # Removed with the rootfs above (storage_ops.image_volume_id).
            volumes = await self._image_volumes(container_id, config, reserved.idmap)
            await ops(runtime_ops.CONTAINER_CREATE, runtime_ops.ContainerCreate(
                id=container_id, rootfs=rootfs.path, image_config=image.config,
                image_volumes=volumes), create)
        except BaseException:
            await undo.unwind()
            raise
        return reserved

    async def _image_volumes(self, container_id: str, config: api.ContainerConfig,
                             idmap: IdMap | None) -> list[runtime_ops.ImageVolume]:
        """Each CRI mount of an image (pulled already, as the kubelet does
        before it creates the container), mounted as a rootfs of its own."""
        ops, create = self.ops, Deadline.CREATE
        volumes = []
        for index, mount in enumerate(m for m in config.mounts if m.image.image):
            image = await ops(image_ops.RESOLVE_IMAGE,
                              image_ops.ResolveImage(image=mount.image.image), create)
            chain = await ensure_unpacked(ops, image.layers, create)
            made = await ops(storage_ops.CREATE_ROOTFS, storage_ops.CreateRootfs(
                container_id=storage_ops.image_volume_id(container_id, index), layers=chain,
                idmap=idmap), create)
            volumes.append(runtime_ops.ImageVolume(path=made.path, image_id=image.id))
        return volumes

    async def start_container(self, request: api.StartContainerRequest
                              ) -> api.StartContainerResponse:
        await self.ops(runtime_ops.CONTAINER_START, runtime_ops.Ref(id=request.container_id))
        return api.StartContainerResponse()

    async def stop_container(self, request: api.StopContainerRequest
                             ) -> api.StopContainerResponse:
        # The runtime pool bounds its own wait by the timeout; the call's
        # deadline must leave room for it.
        await self.ops(runtime_ops.CONTAINER_STOP, runtime_ops.ContainerStop(
            id=request.container_id, timeout=request.timeout))
        return api.StopContainerResponse()

    async def remove_container(self, request: api.RemoveContainerRequest
                               ) -> api.RemoveContainerResponse:
        await self._remove(request.container_id, Deadline.CALL)
        return api.RemoveContainerResponse()

    async def _remove(self, container_id: str, policy: Deadline) -> None:
        # Killed, then the rootfs, then the record: a removal that fails
        # half-way leaves the record, so the kubelet's retry finishes the job.
        stopped = await self.ops(runtime_ops.CONTAINER_STOP, runtime_ops.ContainerStop(
            id=container_id, timeout=0), policy)
        if not stopped.found:
            return  # CRI: removing an absent container succeeds
        await self.ops(storage_ops.REMOVE_ROOTFS,
                       storage_ops.RemoveRootfs(container_id=stopped.id), policy)
        await self.ops(runtime_ops.CONTAINER_REMOVE, runtime_ops.Ref(id=stopped.id), policy)

    async def list_containers(self, request: api.ListContainersRequest
                              ) -> api.ListContainersResponse:
        result = await self.ops(runtime_ops.CONTAINER_LIST, runtime_ops.ContainerListQuery(
            filter=request.filter.SerializeToString()))
        return api.ListContainersResponse(
            containers=[api.Container.FromString(item) for item in result.items])

    async def stream_containers(self, request: api.StreamContainersRequest
                                ) -> AsyncIterator[api.StreamContainersResponse]:
        listed = await self.list_containers(api.ListContainersRequest(filter=request.filter))
        for part in chunked(listed.containers):
            yield api.StreamContainersResponse(containers=part)

    async def container_status(self, request: api.ContainerStatusRequest
                               ) -> api.ContainerStatusResponse:
        wanted, verbose = request.container_id, request.verbose

        async def fetch() -> Answer:
            result = await self.ops(runtime_ops.CONTAINER_STATUS, runtime_ops.StatusQuery(
                id=wanted, verbose=verbose))
            return container_answer(result.status, wanted, result.info)

        return api.ContainerStatusResponse.FromString(
            await self.cache.read(container_key(wanted, verbose), fetch))

    async def reopen_container_log(self, request: api.ReopenContainerLogRequest
                                   ) -> api.ReopenContainerLogResponse:
        await self.ops(runtime_ops.CONTAINER_REOPEN_LOG, runtime_ops.Ref(id=request.container_id))
        return api.ReopenContainerLogResponse()

    async def exec_sync(self, request: api.ExecSyncRequest) -> api.ExecSyncResponse:
        # The command's own timeout is enforced by podvisor-conmon (it kills
        # and reaps the command); the call's deadline bounds everything else.
        result = await self.ops(runtime_ops.CONTAINER_EXEC_SYNC, runtime_ops.ExecSync(
            id=request.container_id, cmd=list(request.cmd), timeout=request.timeout))
        return api.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr,
                                    exit_code=result.exit_code)

    async def update_container_resources(self, request: api.UpdateContainerResourcesRequest
                                         ) -> api.UpdateContainerResourcesResponse:
        # Windows resources have no meaning here; the Linux ones are the
        # kubelet's whole request on this node.
        await self.ops(runtime_ops.CONTAINER_UPDATE, runtime_ops.ContainerUpdate(
            id=request.container_id, resources=request.linux.SerializeToString()))
        return api.UpdateContainerResourcesResponse()
