"""Bad input gets an error and the daemon keeps serving: garbage on the CRI
socket, over-size messages, unknown methods, hostile frames on a worker
endpoint; and every RPC not implemented yet answers UNIMPLEMENTED."""

from __future__ import annotations

import contextlib
import re
import socket

import grpc
import msgpack
import pytest
import zmq
from daemonlib import Daemon, poll_until

from podvisor.proto import api_pb2 as api

IMPLEMENTED = {
    "Version", "Status", "RuntimeConfig", "UpdateRuntimeConfig",
    "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus", "ListPodSandbox",
    "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer", "ListContainers",
    "ContainerStatus", "ReopenContainerLog", "ExecSync", "GetContainerEvents",
    "ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo",
}


def still_serving(daemon: Daemon) -> None:
    reply = daemon.runtime.Version(api.VersionRequest(), timeout=10)
    assert reply.runtime_name == "podvisor"


def all_rpcs() -> list[tuple[str, str, bool]]:
    """(service, method, server_streaming) for every RPC of the CRI API."""
    return [(service.name, method.name, method.server_streaming)
            for service in api.DESCRIPTOR.services_by_name.values()
            for method in service.methods]


@pytest.mark.parametrize(
    ("service", "method", "streaming"),
    [rpc for rpc in all_rpcs() if rpc[1] not in IMPLEMENTED],
    ids=[rpc[1] for rpc in all_rpcs() if rpc[1] not in IMPLEMENTED])
def test_not_yet_implemented_rpcs_answer_unimplemented(
        daemon: Daemon, service: str, method: str, streaming: bool) -> None:
    descriptor = api.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    request_type = getattr(api, descriptor.input_type.name)
    response_type = getattr(api, descriptor.output_type.name)
    path = f"/runtime.v1.{service}/{method}"
    assert daemon.channel is not None
    with pytest.raises(grpc.RpcError) as err:
        if streaming:
            stub = daemon.channel.unary_stream(
                path, request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString)
            list(stub(request_type(), timeout=10))
        else:
            call = daemon.channel.unary_unary(
                path, request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString)
            call(request_type(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "not implemented" in (err.value.details() or "")


def test_every_cri_rpc_is_served(daemon: Daemon) -> None:
    # The generated servicers know all 43; none may fall back to grpc's
    # "Method not found", which would mean we forgot one.
    assert len(all_rpcs()) == 43


def test_garbage_bytes_on_the_socket(daemon: Daemon) -> None:
    for junk in (b"\x00" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 8):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(daemon.socket))
            s.sendall(junk)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                s.recv(4096)  # whatever the HTTP/2 layer answers before closing
    still_serving(daemon)


def test_over_size_message_is_refused(daemon: Daemon) -> None:
    big = api.ExecSyncRequest(container_id="x", cmd=["a" * (81 * 1024 * 1024)])
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime.ExecSync(big, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(daemon)


def test_unknown_method(daemon: Daemon) -> None:
    assert daemon.channel is not None
    call = daemon.channel.unary_unary("/runtime.v1.RuntimeService/NoSuchMethod")
    with pytest.raises(grpc.RpcError) as err:
        call(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    still_serving(daemon)


def test_hostile_frames_on_a_worker_endpoint(daemon: Daemon) -> None:
    endpoint = f"ipc://{daemon.runroot}/bus/runtime.sock"
    before = daemon.workers()
    ctx = zmq.Context()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.IDENTITY, b"intruder")
    peer.connect(endpoint)
    try:
        hostile = [
            [b"", b"PV1", b"\x02", b"\xc1\xc1not msgpack"],            # malformed msgpack
            [b"", b"PV1", b"\x02", msgpack.packb([1, 2, 3])],          # not a map
            [b"", b"XXX", b"\x04", b""],                               # wrong tag
            [b"", b"PV1", b"\x7f", b""],                               # unknown command
            [b"garbage"],                                              # wrong frame count
            [b"", b"PV1", b"\x03", msgpack.packb({"id": b"x" * 16, "result": 1})],  # stray reply
            [b"", b"PV1", b"\x01", msgpack.packb(                     # READY from a stranger
                {"pool": "runtime", "index": 1, "pid": 1, "proto": 1, "ops": ["runtime.version"],
                 "max_inflight": 100})],
        ]
        for frames in hostile:
            peer.send_multipart(frames)
        # The stranger's READY is answered with DISCONNECT, never admitted.
        assert peer.poll(5000)
        assert peer.recv_multipart()[2] == b"\x05"
    finally:
        peer.close()
        ctx.term()

    def counted() -> re.Match[str] | None:
        return re.search(r'podvisor_bus_events_total\{kind="protocol_errors",pool="runtime"\} '
                         r'([0-9.]+)', daemon.metrics())
    match = poll_until(counted, 5, what="protocol errors counted")
    assert float(match.group(1)) >= 4
    for _ in range(20):
        still_serving(daemon)
    after = daemon.workers()
    assert {k: w["pid"] for k, w in after.items()} == {k: w["pid"] for k, w in before.items()}
