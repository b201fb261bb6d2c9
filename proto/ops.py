"""The op catalogue: every operation the bus carries, the pool that serves
it, and whether it only reads.

Op names are ``<pool>.<verb>``. Most verbs are the snake_case of the CRI RPC
they serve (``runtime.stop_container``); multi-step RPCs add narrow ops of
their own as their issues land (``net.setup``). A ``read_only`` op may be
retried once on another worker when the one holding it dies, and so is an
``idempotent`` stage (creates keyed by id, stops and removals); any other
mutation is retried only when it never reached its worker (design.md, "The
bus").

A worker advertises in READY the subset it implements; an op in the
catalogue that no worker implements yet is answered UNIMPLEMENTED by the
worker it reaches, never faked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

POOLS = ("image", "storage", "runtime", "net")


@dataclass(frozen=True)
class Op:
    name: str
    read_only: bool = False
    # A stage keyed by the object's id that finds and finishes its own
    # earlier attempt (a record, a reservation, a mount already there, or
    # already gone for a removal): the bus may run it again on another
    # worker when the first one died. Cleanup stacks rely on it: an undo
    # step must not fail just because a worker died beside it.
    idempotent: bool = False

    @property
    def pool(self) -> str:
        return self.name.split(".", 1)[0]


# CRI RPC -> owning pool. Status is answered by the runtime and net pools
# together and RuntimeConfig by the runtime pool; both appear here under the
# pool that owns the first step.
_RPC_POOL: dict[str, str] = {
    **dict.fromkeys((
        "Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus",
        "ListPodSandbox", "StreamPodSandboxes", "CreateContainer", "StartContainer",
        "StopContainer", "RemoveContainer", "ListContainers", "StreamContainers",
        "ContainerStatus", "UpdateContainerResources", "ReopenContainerLog", "ExecSync",
        "Exec", "Attach", "ContainerStats", "ListContainerStats", "StreamContainerStats",
        "PodSandboxStats", "ListPodSandboxStats", "StreamPodSandboxStats",
        "UpdateRuntimeConfig", "Status", "CheckpointContainer", "CheckpointPod", "RestorePod",
        "GetContainerEvents", "ListMetricDescriptors", "ListPodSandboxMetrics",
        "StreamPodSandboxMetrics", "RuntimeConfig", "UpdatePodSandboxResources",
    ), "runtime"),
    "PortForward": "net",
    **dict.fromkeys(("ListImages", "StreamImages", "ImageStatus", "PullImage", "RemoveImage"),
                    "image"),
    "ImageFsInfo": "storage",
}

# RPCs that change nothing: safe to replay on another worker.
_READ_ONLY_RPCS = frozenset({
    "Version", "PodSandboxStatus", "ListPodSandbox", "StreamPodSandboxes", "ListContainers",
    "StreamContainers", "ContainerStatus", "ContainerStats", "ListContainerStats",
    "StreamContainerStats", "PodSandboxStats", "ListPodSandboxStats", "StreamPodSandboxStats",
    "Status", "ListMetricDescriptors", "ListPodSandboxMetrics", "StreamPodSandboxMetrics",
    "RuntimeConfig", "ListImages", "StreamImages", "ImageStatus", "ImageFsInfo",
})

# Ops that are not one CRI RPC each.
_EXTRA_OPS = (
    Op("net.status", read_only=True),
    Op("net.setup", idempotent=True),
    Op("net.teardown", idempotent=True),
    Op("net.pod_status", read_only=True),
    Op("net.reconcile"),
    Op("image.resolve_image", read_only=True),
    Op("image.layer_chains", read_only=True),
    Op("runtime.sandbox_reserve", idempotent=True),
    Op("runtime.sandbox_start"),
    Op("runtime.sandbox_stop_containers"),
    Op("runtime.sandbox_stop", idempotent=True),
    Op("runtime.sandbox_remove", idempotent=True),
    Op("runtime.sandbox_status", read_only=True),
    Op("runtime.sandbox_list", read_only=True),
    Op("runtime.container_reserve", idempotent=True),
    Op("runtime.container_create"),
    Op("runtime.container_start"),
    Op("runtime.container_stop"),
    Op("runtime.container_remove", idempotent=True),
    Op("runtime.container_status", read_only=True),
    Op("runtime.container_list", read_only=True),
    Op("runtime.container_exec_sync"),
    Op("runtime.container_reopen_log"),
    Op("runtime.reconcile"),
    Op("runtime.exits_since", read_only=True),
    Op("storage.unpack_layer"),
    Op("storage.remove_layer"),
    Op("storage.create_rootfs", idempotent=True),
    Op("storage.mount_rootfs"),
    Op("storage.remove_rootfs", idempotent=True),
    Op("storage.reconcile"),
)


def snake_case(rpc: str) -> str:
    """``RunPodSandbox`` -> ``run_pod_sandbox``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


def rpc_op(rpc: str) -> Op:
    """Return the op that serves CRI RPC ``rpc``; KeyError for unknown RPCs."""
    return CATALOGUE[f"{_RPC_POOL[rpc]}.{snake_case(rpc)}"]


CATALOGUE: dict[str, Op] = {
    op.name: op
    for op in (
        *(Op(f"{pool}.{snake_case(rpc)}", rpc in _READ_ONLY_RPCS)
          for rpc, pool in _RPC_POOL.items()),
        *_EXTRA_OPS,
    )
}
