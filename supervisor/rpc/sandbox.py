"""Pod sandbox RPCs: Run/Stop/RemovePodSandbox, PodSandboxStatus,
ListPodSandbox and StreamPodSandboxes, UpdatePodSandboxResources.

RunPodSandbox is orchestrated here, one narrow op per pool:

    runtime.sandbox_reserve  name + "creating" record; answers the name,
                             host network and the pause image to use; pins
                             the pod's user namespace (userns mode POD)
    net.ensure_netns         the network namespace (inside that user namespace)
    then at once:
      net.setup              CNI ADD in it (the addresses)
      runtime.sandbox_prepare  ipc/uts pins, cgroup, infra in it
    runtime.sandbox_start    files (the hosts file has the addresses); "ready"

(a host-network pod: net.setup, the node's addresses, then
runtime.sandbox_start doing all of its part at once). Overlapping the
chain's plugins with the infra's runtime calls takes about a third off a
sequential RunPodSandbox, and costs no CPU.

with a cleanup stack that undoes the steps done when a later one fails,
and a create table (creates.py) that lets a kubelet retry join a create
that outlived its first deadline. The config goes to the runtime pool
whole, serialized; what the kubelet reads back (PodSandboxStatus, the list
items) the runtime pool builds, and this module only parses.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

from ...proto import api_pb2 as api
from ...proto import image_ops, net_ops, runtime_ops, storage_ops
from ...proto.errors import FailedPrecondition, NotFound
from ...proto.idmap import IdMap
from ..creates import CreateTable
from ..opclient import Deadline, OpClient
from ..status_cache import Answer, StatusCache, pod_answer, pod_key
from .chunks import chunked
from .cleanup import CleanupStack, both
from .layers import ensure_unpacked
from .metadata import check_metadata


class SandboxService:
    """The pod sandbox RPCs; holds the op client, the create table (their
    events come from the runtime pool's change feed) and the status cache."""

    def __init__(self, ops: OpClient, creates: CreateTable, cache: StatusCache) -> None:
        self.ops = ops
        self.creates = creates
        self.cache = cache

    async def run_pod_sandbox(self, request: api.RunPodSandboxRequest
                              ) -> api.RunPodSandboxResponse:
        check_metadata("pod sandbox config", request.config)

        async def create() -> str:
            return await self._create(request.config, request.runtime_handler)

        async def cleanup(sandbox_id: str) -> None:
            await self._stop_and_remove(sandbox_id, Deadline.CLEANUP)

        # Keyed on the metadata the kubelet's retry repeats (the pod's name
        # is the runtime pool's to derive, at reserve), and by kind: a pod
        # and a container never share a key.
        meta = request.config.metadata
        key = f"pod sandbox {meta.namespace}/{meta.name}/{meta.uid}/{meta.attempt}"
        sandbox_id = await self.creates.run(key, self.ops.deadline(), create, cleanup)
        return api.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def _create(self, config: api.PodSandboxConfig, handler: str) -> str:
        ops, create, cleanup = self.ops, Deadline.CREATE, Deadline.CLEANUP
        sandbox_id = secrets.token_hex(32)
        undo = CleanupStack(f"pod sandbox {sandbox_id}")
        try:
            # Pushed first: a worker that dies inside the reserve may have
            # written the record already.
            undo.push("remove the sandbox record", lambda: ops(
                runtime_ops.SANDBOX_REMOVE, runtime_ops.Ref(id=sandbox_id), cleanup))
            # Undone after the stop (the infra may run from it); absent is fine.
            undo.push("remove the pause rootfs", lambda: ops(
                storage_ops.REMOVE_ROOTFS, storage_ops.RemoveRootfs(container_id=sandbox_id),
                cleanup))
            undo.push("stop the sandbox", lambda: ops(
                runtime_ops.SANDBOX_STOP, runtime_ops.Ref(id=sandbox_id), cleanup))
            reserved = await ops(runtime_ops.SANDBOX_RESERVE, runtime_ops.SandboxReserve(
                id=sandbox_id, config=config.SerializeToString(), runtime_handler=handler),
                create)
            # Host-network pods skip CNI, but the net pool still answers with
            # the node's IPs, which is what the kubelet expects to see for them.
            undo.push("tear the pod network down", lambda: ops(
                net_ops.TEARDOWN, net_ops.TeardownPod(pod_id=sandbox_id), cleanup))
            setup = _net_setup(sandbox_id, config, reserved.host_network,
                               reserved.userns_path)
            if reserved.host_network:
                net = await ops(net_ops.SETUP, setup, create)
                await ops(runtime_ops.SANDBOX_START, runtime_ops.SandboxStart(
                    id=reserved.id, ips=net.ips,
                    infra_image=await self._infra_image(reserved)), create)
            else:
                # The namespace first; then the CNI chain runs while the
                # runtime pool starts the infra in it, which needs no address
                # (on 2 cores, one's process starts overlap the other's).
                netns = await ops(net_ops.ENSURE_NETNS, setup, create)
                net, _ = await both(ops(net_ops.SETUP, setup, create),
                                     self._prepare(reserved, netns.netns_path))
                await ops(runtime_ops.SANDBOX_START, runtime_ops.SandboxStart(
                    id=reserved.id, netns_path=netns.netns_path, ips=net.ips), create)
        except BaseException:
            await undo.unwind()
            raise
        return sandbox_id

    async def _prepare(self, reserved: runtime_ops.SandboxReserved, netns_path: str) -> None:
        await self.ops(runtime_ops.SANDBOX_PREPARE, runtime_ops.SandboxPrepare(
            id=reserved.id, netns_path=netns_path,
            infra_image=await self._infra_image(reserved)), Deadline.CREATE)

    async def _infra_image(self, reserved: runtime_ops.SandboxReserved
                           ) -> runtime_ops.InfraImage | None:
        """The pause image's rootfs if the pod's infra runs it, else None."""
        if not reserved.pause_image:
            return None
        return await self._pause_rootfs(reserved.pause_image, reserved.id, reserved.idmap)

    async def _pause_rootfs(self, pause_image: str, sandbox_id: str,
                            idmap: IdMap | None) -> runtime_ops.InfraImage:
        """Pull the configured pause image if absent and mount a rootfs of it."""
        ops, create = self.ops, Deadline.CREATE
        resolve = image_ops.ResolveImage(image=pause_image)
        try:
            image = await ops(image_ops.RESOLVE_IMAGE, resolve, create)
        except NotFound:
            pull = api.PullImageRequest(image=api.ImageSpec(image=pause_image))
            await ops(image_ops.PULL_IMAGE,
                      image_ops.PullImage(request=pull.SerializeToString()), create)
            image = await ops(image_ops.RESOLVE_IMAGE, resolve, create)
        chain = await ensure_unpacked(ops, image.layers, create)
        rootfs = await ops(storage_ops.CREATE_ROOTFS, storage_ops.CreateRootfs(
            container_id=sandbox_id, layers=chain, idmap=idmap), create)
        config = image.config.get("config") or {}
        args = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        if not args:
            raise FailedPrecondition(f"pause image {pause_image} has no Entrypoint or Cmd")
        return runtime_ops.InfraImage(rootfs=rootfs.path, args=args)

    async def stop_pod_sandbox(self, request: api.StopPodSandboxRequest
                               ) -> api.StopPodSandboxResponse:
        await self._stop(request.pod_sandbox_id, Deadline.CALL)
        return api.StopPodSandboxResponse()

    async def _stop(self, sandbox_id: str, policy: Deadline) -> str | None:
        """Kill the pod's containers, stop the sandbox, release its network;
        the pod's full id, None when there is no such pod.

        CRI: "If there are any running containers in the sandbox, they must be
        forcibly terminated"; stopping an absent sandbox is not an error.
        """
        stopped = await self.ops(runtime_ops.SANDBOX_STOP_CONTAINERS,
                                 runtime_ops.Ref(id=sandbox_id), policy)
        if not stopped.found:
            return None
        full_id = stopped.id
        await self.ops(runtime_ops.SANDBOX_STOP, runtime_ops.Ref(id=full_id), policy)
        await self.ops(net_ops.TEARDOWN, net_ops.TeardownPod(pod_id=full_id), policy)
        return full_id

    async def remove_pod_sandbox(self, request: api.RemovePodSandboxRequest
                                 ) -> api.RemovePodSandboxResponse:
        await self._stop_and_remove(request.pod_sandbox_id, Deadline.CALL)
        return api.RemovePodSandboxResponse()

    async def _stop_and_remove(self, sandbox_id: str, policy: Deadline) -> None:
        full_id = await self._stop(sandbox_id, policy)
        if full_id is None:
            return  # CRI: removing an absent sandbox succeeds
        ops = self.ops
        # Half-created containers too ("all"): they must not keep the pod.
        containers = await ops(runtime_ops.CONTAINER_LIST, runtime_ops.ContainerListQuery(
            sandbox_id=full_id, all=True), policy)
        for item in containers.items:
            container_id = api.Container.FromString(item).id
            # Rootfs before record, so a failure leaves what a retry needs.
            await ops(storage_ops.REMOVE_ROOTFS,
                      storage_ops.RemoveRootfs(container_id=container_id), policy)
            await ops(runtime_ops.CONTAINER_REMOVE, runtime_ops.Ref(id=container_id), policy)
        # The pause image's rootfs, if the pod had one (absent is fine).
        await ops(storage_ops.REMOVE_ROOTFS, storage_ops.RemoveRootfs(container_id=full_id),
                  policy)
        await ops(runtime_ops.SANDBOX_REMOVE, runtime_ops.Ref(id=full_id), policy)

    async def pod_sandbox_status(self, request: api.PodSandboxStatusRequest
                                 ) -> api.PodSandboxStatusResponse:
        # The evented PLEG reads the pod's containers from this answer too.
        wanted, verbose = request.pod_sandbox_id, request.verbose

        async def fetch() -> Answer:
            result = await self.ops(runtime_ops.SANDBOX_STATUS, runtime_ops.StatusQuery(
                id=wanted, verbose=verbose))
            return pod_answer(result.status, result.containers, wanted, result.info)

        response = api.PodSandboxStatusResponse.FromString(
            await self.cache.read(pod_key(wanted, verbose), fetch))
        # When the statuses were read: they are still true now, or the
        # cache would have dropped them.
        response.timestamp = time.time_ns()
        return response

    async def list_pod_sandbox(self, request: api.ListPodSandboxRequest
                               ) -> api.ListPodSandboxResponse:
        result = await self.ops(runtime_ops.SANDBOX_LIST, runtime_ops.SandboxListQuery(
            filter=request.filter.SerializeToString()))
        return api.ListPodSandboxResponse(
            items=[api.PodSandbox.FromString(item) for item in result.items])

    async def stream_pod_sandboxes(self, request: api.StreamPodSandboxesRequest
                                   ) -> AsyncIterator[api.StreamPodSandboxesResponse]:
        listed = await self.list_pod_sandbox(api.ListPodSandboxRequest(filter=request.filter))
        for part in chunked(listed.items):
            yield api.StreamPodSandboxesResponse(pod_sandboxes=part)

    async def update_pod_sandbox_resources(self, request: api.UpdatePodSandboxResourcesRequest
                                           ) -> api.UpdatePodSandboxResourcesResponse:
        await self.ops(runtime_ops.SANDBOX_UPDATE, runtime_ops.SandboxUpdate(
            id=request.pod_sandbox_id, resources=request.resources.SerializeToString(),
            overhead=request.overhead.SerializeToString()))
        return api.UpdatePodSandboxResourcesResponse()


def _net_setup(sandbox_id: str, config: api.PodSandboxConfig,
               host_network: bool, userns_path: str) -> net_ops.SetupPod:
    """What the net pool needs of the pod, from the CRI fields themselves."""
    meta = config.metadata
    dns = config.dns_config
    return net_ops.SetupPod(
        pod_id=sandbox_id, name=meta.name, namespace=meta.namespace, uid=meta.uid,
        port_mappings=[net_ops.PortMapping(
            # An enum number the API does not know goes as its digits: the
            # net pool refuses it, naming the field.
            protocol=(api.Protocol.Name(m.protocol) if m.protocol in api.Protocol.values()
                      else str(m.protocol)), container_port=m.container_port,
            host_port=m.host_port, host_ip=m.host_ip) for m in config.port_mappings],
        dns=net_ops.DnsConfig(servers=list(dns.servers), searches=list(dns.searches),
                              options=list(dns.options))
        if config.HasField("dns_config") else None,
        host_network=host_network, cgroup_parent=config.linux.cgroup_parent,
        userns_path=userns_path)
