"""Bad input gets an error and the daemon keeps serving: garbage on the CRI
socket, over-size messages, unknown methods, hostile frames on a worker
endpoint; every RPC of the CRI API reaches podvisor's own front, and every
RPC not implemented yet answers UNIMPLEMENTED in podvisor's own words.

gRPC has two answers of its own that also say UNIMPLEMENTED: "Method not
found!" for a method nobody registered and "Method not implemented!" from
the generated servicer base class. Asserting podvisor's message, and the
daemon's count of the call, is what tells them apart."""

from __future__ import annotations

import contextlib
import re
import socket
from typing import Any

import grpc
import msgpack
import pytest
import zmq
from daemonlib import Daemon, poll_until
from prometheus_client.parser import text_string_to_metric_families

from podvisor.proto import api_pb2 as api
from podvisor.proto import api_pb2_grpc as api_grpc

IMPLEMENTED = {
    "Version", "Status", "RuntimeConfig", "UpdateRuntimeConfig",
    "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus", "ListPodSandbox",
    "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer", "ListContainers",
    "ContainerStatus", "ReopenContainerLog", "ExecSync", "GetContainerEvents",
    "UpdateContainerResources", "UpdatePodSandboxResources",
    "StreamPodSandboxes", "StreamContainers", "StreamImages", "StreamContainerStats",
    "StreamPodSandboxStats", "StreamPodSandboxMetrics",
    "Exec", "Attach", "PortForward",
    "ContainerStats", "ListContainerStats", "PodSandboxStats", "ListPodSandboxStats",
    "ListMetricDescriptors", "ListPodSandboxMetrics",
    "ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo",
}
# What gRPC itself answers for a method nobody registered, and what the
# generated servicer base class answers for one a servicer does not define.
GRPC_NOT_FOUND = "Method not found!"
GRPC_BASE_CLASS = "Method not implemented!"
# An implemented stream with nothing to send (GetContainerEvents on an idle
# daemon) runs until its deadline; an unserved one is refused at once.
STREAM_DEADLINE = 1.0


def unserved_message(rpc: str) -> str:
    """podvisor's answer to an RPC no pool serves (written out here, not
    imported, so that the daemon cannot change both sides at once)."""
    return f"podvisor does not implement {rpc} yet"


def still_serving(daemon: Daemon) -> None:
    reply = daemon.runtime.Version(api.VersionRequest(), timeout=10)
    assert reply.runtime_name == "podvisor"


def all_rpcs() -> list[tuple[str, str, bool]]:
    """(service, method, server_streaming) for every RPC of the CRI API."""
    return [(service.name, method.name, method.server_streaming)
            for service in api.DESCRIPTOR.services_by_name.values()
            for method in service.methods]


def unserved_rpcs() -> list[tuple[str, str, bool]]:
    return [rpc for rpc in all_rpcs() if rpc[1] not in IMPLEMENTED]


def call(daemon: Daemon, service: str, method: str, streaming: bool,
         timeout: float = 10) -> None:
    """Call ``method`` on the daemon's socket with an empty request; raises
    ``grpc.RpcError`` unless it answers OK."""
    descriptor = api.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    request_type = getattr(api, descriptor.input_type.name)
    response_type = getattr(api, descriptor.output_type.name)
    path = f"/runtime.v1.{service}/{method}"
    assert daemon.channel is not None
    if streaming:
        stub = daemon.channel.unary_stream(
            path, request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString)
        list(stub(request_type(), timeout=timeout))
    else:
        unary = daemon.channel.unary_unary(
            path, request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString)
        unary(request_type(), timeout=timeout)


def answer(daemon: Daemon, service: str, method: str, streaming: bool
           ) -> tuple[grpc.StatusCode, str]:
    """The status code and details the daemon answers an empty request with."""
    try:
        call(daemon, service, method, streaming,
             timeout=STREAM_DEADLINE if streaming else 10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def counted_calls(daemon: Daemon) -> dict[str, float]:
    """podvisor_rpc_requests_total summed over codes, by method: the calls
    the daemon's front handled (gRPC's own refusals never get there)."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(daemon.metrics()):
        for sample in family.samples:
            if sample.name == "podvisor_rpc_requests_total":
                method = sample.labels["method"]
                counts[method] = counts.get(method, 0.0) + sample.value
    return counts


@pytest.mark.parametrize(
    ("service", "method", "streaming"), unserved_rpcs(),
    ids=[rpc[1] for rpc in unserved_rpcs()])
def test_not_yet_implemented_rpcs_answer_unimplemented(
        daemon: Daemon, service: str, method: str, streaming: bool) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call(daemon, service, method, streaming)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # podvisor's own refusal, not gRPC's fallback for a method it lost.
    assert err.value.details() == unserved_message(method)


class _RecordingContext:
    """The two calls the generated servicer base class makes on its context."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


@pytest.mark.parametrize(("service", "method", "streaming"), all_rpcs(),
                         ids=[rpc[1] for rpc in all_rpcs()])
def test_grpc_fallbacks_are_not_mistaken_for_podvisors_refusal(
        service: str, method: str, streaming: bool) -> None:
    # What a daemon that lost this method would answer, next to what the
    # UNIMPLEMENTED test above requires: the two must differ, or that test
    # could not fail.
    servicer: Any = getattr(api_grpc, f"{service}Servicer")()
    context = _RecordingContext()
    with pytest.raises(NotImplementedError):
        getattr(servicer, method)(None, context)
    assert context.code == grpc.StatusCode.UNIMPLEMENTED
    assert context.details == GRPC_BASE_CLASS
    assert unserved_message(method) not in (GRPC_BASE_CLASS, GRPC_NOT_FOUND)


def test_every_cri_rpc_is_served(daemon: Daemon) -> None:
    rpcs = all_rpcs()
    assert len(rpcs) == 43
    assert {method for _, method, _ in rpcs} >= IMPLEMENTED
    before = counted_calls(daemon)
    answers = {method: answer(daemon, service, method, streaming)
               for service, method, streaming in rpcs}
    # An implemented RPC handles an empty request itself (validation error,
    # empty list, or a stream that waits out its deadline); every other one
    # is refused by podvisor by name.
    wrong = {method: got for method, got in answers.items()
             if (got[0] == grpc.StatusCode.UNIMPLEMENTED if method in IMPLEMENTED
                 else got != (grpc.StatusCode.UNIMPLEMENTED, unserved_message(method)))}
    assert not wrong, wrong
    assert not [m for m, (_, details) in answers.items()
                if details in (GRPC_NOT_FOUND, GRPC_BASE_CLASS)]

    # Each call went through the daemon's front: it counted it under its
    # method. A cancelled stream is counted when the daemon notices.
    def uncounted() -> list[str]:
        after = counted_calls(daemon)
        return [method for _, method, _ in rpcs
                if after.get(method, 0.0) - before.get(method, 0.0) != 1]
    with contextlib.suppress(AssertionError):
        poll_until(lambda: not uncounted(), 10, what="every call counted")
    assert not uncounted(), f"not counted exactly once by the daemon: {uncounted()}"


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
