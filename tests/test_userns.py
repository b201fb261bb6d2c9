"""User namespace requests through the CRI socket: never ignored.

No runtime handler advertises user namespaces in Status yet, so a pod
asking for its own (mode POD) is UNIMPLEMENTED; a malformed request is
INVALID_ARGUMENT; NODE runs on the node's, as the kubelet asks for
``hostUsers: true`` pods. A refused pod leaves nothing.
"""

from __future__ import annotations

import grpc
import pytest
from podfixtures import Node

from podvisor.proto import api_pb2 as api

pytestmark = pytest.mark.timeout(180)

ONE = [api.IDMapping(container_id=0, host_id=100000, length=65536)]


def pod_with(n: Node, name: str, userns: api.UserNamespace) -> api.PodSandboxConfig:
    config = n.pod_config(name)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(userns)
    return config


@pytest.mark.parametrize(("userns", "code"), [
    (api.UserNamespace(mode=api.POD, uids=ONE, gids=ONE), grpc.StatusCode.UNIMPLEMENTED),
    (api.UserNamespace(mode=api.POD, uids=ONE * 2, gids=ONE), grpc.StatusCode.INVALID_ARGUMENT),
    (api.UserNamespace(mode=api.POD, uids=[api.IDMapping(container_id=1, host_id=1000,
                                                         length=10)], gids=ONE),
     grpc.StatusCode.INVALID_ARGUMENT),
    (api.UserNamespace(mode=api.POD, uids=ONE, gids=[api.IDMapping(
        container_id=0, host_id=4294967000, length=65536)]), grpc.StatusCode.INVALID_ARGUMENT),
    (api.UserNamespace(mode=api.CONTAINER), grpc.StatusCode.INVALID_ARGUMENT),
    (api.UserNamespace(mode=api.TARGET), grpc.StatusCode.INVALID_ARGUMENT),
    (api.UserNamespace(mode=api.NODE, uids=ONE), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_user_namespace_requests_are_refused_leaving_nothing(
        n: Node, userns: api.UserNamespace, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        n.run_pod(pod_with(n, "userns-refused", userns))
    assert caught.value.code() == code, caught.value.details()
    pods = n.daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items
    assert "userns-refused" not in {p.metadata.name for p in pods}


def test_node_mode_runs_in_the_node_user_namespace(n: Node) -> None:
    node_mode = api.UserNamespace(mode=api.NODE)
    config = pod_with(n, "userns-node", node_mode)
    pod_id = n.run_pod(config)
    container = n.container_config("maps", "trap 'exit 0' TERM; sleep 86400 & wait")
    container.linux.security_context.namespace_options.userns_options.CopyFrom(node_mode)
    cid = n.run(pod_id, config, container)
    n.wait_state(cid, api.CONTAINER_RUNNING)
    inside = n.exec(cid, "cat", "/proc/self/uid_map").stdout.decode().split()
    with open("/proc/self/uid_map", encoding="ascii") as f:
        assert inside == f.read().split()
    # A container cannot ask for a user namespace its pod does not have.
    refused = n.container_config("own-userns", "true")
    refused.linux.security_context.namespace_options.userns_options.CopyFrom(
        api.UserNamespace(mode=api.POD, uids=ONE, gids=ONE))
    with pytest.raises(grpc.RpcError) as caught:
        n.create(pod_id, config, refused)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    n.remove_pod(pod_id)
