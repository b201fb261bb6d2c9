"""Hostile and fuzzed CRI requests through the socket, over every RPC.

A hypothesis-driven client builds requests from the CRI's own descriptors:
every field may be absent, at a limit, or hostile (control characters,
``..``, 10 KB strings, unknown enum values, out-of-range numbers), and ids
point at real objects part of the time so the deep paths run too. Then the
hostile-value table of issue 9 runs value by value. What must hold:

- no answer is INTERNAL or UNKNOWN, and every error message is under 1 KB;
- no worker restarts;
- nothing is created outside the state dirs and the scratch dir the
  requests are allowed to name;
- once every pod is removed, no pod cgroup, mount, network namespace, lock
  file, name reservation or record is left.

``PODVISOR_FUZZ_EXAMPLES`` sets the number of fuzzed requests (default 250,
about a minute here); CI runs the default.

The generated requests never make podvisor reach past this machine: image
names for PullImage always name the test registry (or are refused before
any lookup), host paths and log directories stay in a scratch dir, and
cgroup parents in a test hierarchy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from podfixtures import Node, node

from podvisor.proto import api_pb2 as api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXAMPLES = int(os.environ.get("PODVISOR_FUZZ_EXAMPLES", "250"))
CGROUP_PREFIX = "/podvisor-fuzz"
BAD = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
MESSAGE_MAX = 1024
# Top-level dirs whose entries a request could add to if a path escaped.
WATCHED = ("/", "/etc", "/run", "/var/lib", "/var/log", "/tmp", "/usr/local")

HOSTILE_TEXT = ["", ".", "..", "../../etc", "/", "a/b", "\x00", "nul\x00inside", "x" * 300,
                "x" * 10_000, "é" * 200, "line\nbreak\x1b[31m", "0-", "-1", "*", "%s%n",
                "k8s_a_b_c_d_0", " ", "\u2028", "UPPER"]


@dataclass
class World:
    """The real objects ids may point at, and where requests may write."""

    n: Node
    scratch: Path
    pod_id: str
    pod: api.PodSandboxConfig
    container_id: str
    image_id: str
    before: dict[str, set[str]] = field(default_factory=dict)


# Other tests of the suite (and of a developer's parallel run) make these.
OWN_TEMP = ("pv-", "pvn-", "pvfuzz-", "pytest-of-", "tmp")


def listing() -> dict[str, set[str]]:
    return {d: {e for e in os.listdir(d) if not (d == "/tmp" and e.startswith(OWN_TEMP))}
            for d in WATCHED if os.path.isdir(d)}


def remove_test_cgroups() -> None:
    for c in os.listdir("/sys/fs/cgroup"):
        top = f"/sys/fs/cgroup/{c}{CGROUP_PREFIX}"
        if os.path.islink(f"/sys/fs/cgroup/{c}") or not os.path.isdir(top):
            continue
        for root, _, _ in sorted(os.walk(top), key=lambda e: -len(e[0])):
            os.rmdir(root)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    scratch = Path(tempfile.mkdtemp(prefix="pvfuzz-"))
    try:
        with node() as n:
            pod = n.pod_config("fuzz-home")
            pod.linux.cgroup_parent = f"{CGROUP_PREFIX}/home"
            pod_id = n.run_pod(pod)
            container_id = n.run(pod_id, pod, n.container_config("home", "sleep 3600"))
            image_id = n.daemon.images.ImageStatus(api.ImageStatusRequest(
                image=api.ImageSpec(image=n.image)), timeout=10).image.id
            here = World(n, scratch, pod_id, pod, container_id, image_id)
            here.before = listing()
            yield here
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        remove_test_cgroups()


# --- strategies built from the CRI descriptors ------------------------------

_I32, _I64 = (-2**31, 2**31 - 1), (-2**63, 2**63 - 1)
_U32, _U64 = (0, 2**32 - 1), (0, 2**64 - 1)
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: _I32, FieldDescriptor.TYPE_SINT32: _I32,
    FieldDescriptor.TYPE_SFIXED32: _I32, FieldDescriptor.TYPE_INT64: _I64,
    FieldDescriptor.TYPE_SINT64: _I64, FieldDescriptor.TYPE_SFIXED64: _I64,
    FieldDescriptor.TYPE_UINT32: _U32, FieldDescriptor.TYPE_FIXED32: _U32,
    FieldDescriptor.TYPE_UINT64: _U64, FieldDescriptor.TYPE_FIXED64: _U64,
}


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (low, high, 0, 1, -1, 2, 1024, 2**31 - 1, 2**32 - 1)
                    if low <= v <= high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=24))


class Requests:
    """Field-aware strategies: free where a value is harmless, kept on this
    machine where a value names a path, an image or an id."""

    def __init__(self, w: World) -> None:
        self.w = w
        registry = w.n.registry
        self.by_name: dict[str, st.SearchStrategy[Any]] = {
            "host_path": st.sampled_from([str(w.scratch / "m"), str(w.scratch / "a" / "b"),
                                          "relative/path", f"{w.scratch}/../x", "",
                                          str(w.scratch / ("y" * 300))]),
            "log_directory": st.sampled_from([str(w.scratch / "logs"), "", "rel/logs",
                                              "../../etc-rel", str(w.scratch) + "/" + "z" * 300]),
            "cgroup_parent": st.sampled_from([f"{CGROUP_PREFIX}/p{i}" for i in range(4)]
                                             + ["", "relative", "/..", "/a/../../b",
                                                CGROUP_PREFIX + "/" + "c" * 300]),
            "pod_sandbox_id": self.ids(w.pod_id),
            "container_id": self.ids(w.container_id),
            "target_id": self.ids(w.container_id),
            "id": self.ids(w.pod_id, w.container_id),
            "server_address": st.one_of(text(), st.sampled_from(["[", "[::1", registry])),
        }
        # PullImage must never name a registry past this machine.
        self.pull_images = st.sampled_from(
            ["", f"{registry}/test/busybox:latest", f"{registry}/missing:1",
             f"{registry}/" + "a" * 300, "UPPER/case", "@sha256:zz", f"{registry}/x@sha256:00",
             f"{registry}/\x00"])
        self.images = st.one_of(text(), st.sampled_from([w.n.image, w.image_id,
                                                         w.image_id[:12]]))

    def ids(self, *real: str) -> st.SearchStrategy[str]:
        prefixes = [r[:12] for r in real]
        return st.one_of(text(), st.sampled_from([*real, *prefixes]))

    def message(self, descriptor: Descriptor, depth: int = 0,
                context: str = "") -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(descriptor)
        if depth > 4:
            return st.just(cls())
        optional = {f.name: self.value(f, depth, context or descriptor.name)
                    for f in descriptor.fields}
        return st.fixed_dictionaries({}, optional=optional).map(
            lambda values: build(cls, descriptor, values))

    def value(self, f: FieldDescriptor, depth: int, context: str) -> st.SearchStrategy[Any]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            entry = f.message_type.fields_by_name
            key_f, value_f = entry["key"], entry["value"]
            return st.dictionaries(self.scalar(key_f, depth, context),
                                   self.single(value_f, depth, context), max_size=3)
        one = self.single(f, depth, context)
        if f.is_repeated:
            return st.lists(one, max_size=3)
        return one

    def single(self, f: FieldDescriptor, depth: int, context: str) -> st.SearchStrategy[Any]:
        if f.message_type is not None:
            return st.deferred(lambda: self.message(f.message_type, depth + 1, context))
        return self.scalar(f, depth, context)

    def scalar(self, f: FieldDescriptor, depth: int, context: str) -> st.SearchStrategy[Any]:
        if f.name == "image" and f.containing_type.name == "ImageSpec":
            return self.pull_images if context == "PullImageRequest" else self.images
        if f.name in self.by_name and f.type == FieldDescriptor.TYPE_STRING:
            return self.by_name[f.name]
        if f.name == "timeout" and context == "ExecSyncRequest":
            return st.integers(0, 2)
        if f.name in ("host_port", "container_port"):
            return st.sampled_from([0, -1, 65536, 31000 + depth, 80])
        kind = f.type
        if kind == FieldDescriptor.TYPE_STRING:
            return text()
        if kind == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind == FieldDescriptor.TYPE_ENUM:
            return st.sampled_from([v.number for v in f.enum_type.values] + [99, -1])
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return st.floats(allow_nan=False, width=32)
        low, high = INT_RANGES[kind]
        return integers(low, high)


def build(cls: Callable[[], Message], descriptor: Descriptor, values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        f = descriptor.fields_by_name[name]
        target = getattr(msg, name, None)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            is_message = f.message_type.fields_by_name["value"].message_type is not None
            for k, v in value.items():
                if is_message:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif f.is_repeated:
            for item in value:
                if f.message_type is not None:
                    target.add().CopyFrom(item)
                else:
                    target.append(item)
        elif f.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


# --- calling every RPC ------------------------------------------------------

def unary_rpcs() -> list[tuple[str, str]]:
    return [(s.name, m.name) for s in api.DESCRIPTOR.services_by_name.values()
            for m in s.methods if not m.server_streaming]


# Removing or stopping the world's own objects would starve the rest of the
# run of real ids to aim at: these RPCs get only fuzzed ids.
DESTRUCTIVE = {"StopPodSandbox", "RemovePodSandbox", "StopContainer", "RemoveContainer",
               "RemoveImage", "UpdateContainerResources", "UpdatePodSandboxResources"}


def call(w: World, service: str, method: str, request: Message) -> tuple[grpc.StatusCode, str]:
    descriptor = api.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    response = getattr(api, descriptor.output_type.name)
    assert w.n.daemon.channel is not None
    stub = w.n.daemon.channel.unary_unary(
        f"/runtime.v1.{service}/{method}", request_serializer=type(request).SerializeToString,
        response_deserializer=response.FromString)
    try:
        stub(request, timeout=60)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def scrub_for(method: str, request: Message, w: World) -> Message:
    """Keep a destructive RPC off the world's own objects."""
    if method not in DESTRUCTIVE:
        return request
    for name in ("pod_sandbox_id", "container_id"):
        if getattr(request, name, None) in (w.pod_id, w.container_id, w.pod_id[:12],
                                            w.container_id[:12]):
            setattr(request, name, "fuzz-" + uuid.uuid4().hex)
    if method == "RemoveImage":
        request.image.image = "fuzz-" + uuid.uuid4().hex  # type: ignore[attr-defined]
    return request


def valid_request(w: World, method: str) -> Message:
    if method == "RunPodSandbox":
        pod = w.n.pod_config(f"fz{uuid.uuid4().hex[:8]}")
        pod.linux.cgroup_parent = f"{CGROUP_PREFIX}/p{uuid.uuid4().hex[:8]}"
        return api.RunPodSandboxRequest(config=pod)
    config = w.n.container_config(f"fz{uuid.uuid4().hex[:8]}", "sleep 1")
    return api.CreateContainerRequest(pod_sandbox_id=w.pod_id, config=config,
                                      sandbox_config=w.pod)


def assert_answer(method: str, code: grpc.StatusCode, message: str) -> None:
    assert code not in BAD, f"{method} answered {code.name}: {message[:300]!r}"
    assert len(message.encode()) < MESSAGE_MAX, f"{method}: {len(message.encode())}-byte message"


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_requests_over_every_rpc(world: World, data: st.DataObject) -> None:
    service, method = data.draw(st.sampled_from(unary_rpcs()), label="rpc")
    descriptor = api.DESCRIPTOR.services_by_name[service].methods_by_name[method].input_type
    request = data.draw(Requests(world).message(descriptor), label="request")
    if method in ("RunPodSandbox", "CreateContainer") and data.draw(st.booleans(), "on valid"):
        # Mostly valid requests with a few fuzzed fields reach the deep paths.
        valid = valid_request(world, method)
        valid.MergeFrom(request)
        request = valid
    code, message = call(world, service, method, scrub_for(method, request, world))
    assert_answer(method, code, message)


def test_the_events_stream_opens_and_ends_at_its_deadline(world: World) -> None:
    # GetContainerEvents, the one streaming RPC, takes an empty request:
    # there is nothing to fuzz, but it must open and end cleanly.
    stub = world.n.daemon.runtime
    with pytest.raises(grpc.RpcError) as err:
        for _ in stub.GetContainerEvents(api.GetEventsRequest(), timeout=0.5):
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# --- the hostile-value table ------------------------------------------------

def container_with(w: World, **resources: Any) -> api.ContainerConfig:
    config = w.n.container_config(f"hostile-{uuid.uuid4().hex[:8]}", "sleep 1")
    config.linux.resources.CopyFrom(api.LinuxContainerResources(**resources))
    return config


def create_and_start(w: World, config: api.ContainerConfig) -> tuple[grpc.StatusCode, str]:
    runtime = w.n.daemon.runtime
    try:
        cid = runtime.CreateContainer(api.CreateContainerRequest(
            pod_sandbox_id=w.pod_id, config=config, sandbox_config=w.pod), timeout=60).container_id
        runtime.StartContainer(api.StartContainerRequest(container_id=cid), timeout=60)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def run_pod_with(w: World, runtime_handler: str = "",
                 **changes: Any) -> tuple[grpc.StatusCode, str]:
    pod = w.n.pod_config("hostile")
    pod.linux.cgroup_parent = f"{CGROUP_PREFIX}/hostile"
    for key, value in changes.items():
        target, _, attr = key.rpartition(".")
        setattr(eval_path(pod, target), attr, value)
    try:
        pod_id = w.n.run_pod(pod, runtime_handler)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    w.n.remove_pod(pod_id)
    return grpc.StatusCode.OK, ""


def eval_path(msg: Message, dotted: str) -> Any:
    for part in filter(None, dotted.split(".")):
        msg = getattr(msg, part)
    return msg


def pull_with(w: World, auth: api.AuthConfig) -> tuple[grpc.StatusCode, str]:
    try:
        w.n.daemon.images.PullImage(api.PullImageRequest(
            image=api.ImageSpec(image=w.n.image), auth=auth), timeout=60)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def exec_with(w: World, cmd: list[str]) -> tuple[grpc.StatusCode, str]:
    try:
        w.n.daemon.runtime.ExecSync(api.ExecSyncRequest(
            container_id=w.container_id, cmd=cmd, timeout=5), timeout=30)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


HOSTILE: dict[str, tuple[Callable[[World], tuple[grpc.StatusCode, str]], set[grpc.StatusCode]]] = {
    "cpuset_cpus path": (lambda w: create_and_start(w, container_with(w, cpuset_cpus="../../etc")),
                         {grpc.StatusCode.INVALID_ARGUMENT}),
    "cpuset_mems open range": (lambda w: create_and_start(w, container_with(w, cpuset_mems="0-")),
                               {grpc.StatusCode.INVALID_ARGUMENT}),
    "hugepage empty size": (lambda w: create_and_start(w, container_with(
        w, hugepage_limits=[api.HugepageLimit(page_size="", limit=2**21)])),
        {grpc.StatusCode.INVALID_ARGUMENT}),
    "hugepage unknown size": (lambda w: create_and_start(w, container_with(
        w, hugepage_limits=[api.HugepageLimit(page_size="3MB", limit=2**21)])),
        {grpc.StatusCode.INVALID_ARGUMENT}),
    "cpu_shares 1": (lambda w: create_and_start(w, container_with(w, cpu_shares=1)),
                     {grpc.StatusCode.INVALID_ARGUMENT}),
    "command not executable": (lambda w: create_and_start(w, api.ContainerConfig(
        metadata=api.ContainerMetadata(name="noexec"), image=api.ImageSpec(image=w.n.image),
        command=["/etc/passwd"])), {grpc.StatusCode.FAILED_PRECONDITION}),
    "10 KB log path": (lambda w: create_and_start(w, api.ContainerConfig(
        metadata=api.ContainerMetadata(name="longlog"), image=api.ImageSpec(image=w.n.image),
        command=["/bin/true"], log_path="l" * 10_000)), {grpc.StatusCode.INVALID_ARGUMENT}),
    "exec NUL in cmd": (lambda w: exec_with(w, ["echo", "a\x00b"]),
                        {grpc.StatusCode.INVALID_ARGUMENT}),
    "pull non-ASCII auth": (lambda w: pull_with(w, api.AuthConfig(auth="é☃")),
                            {grpc.StatusCode.INVALID_ARGUMENT}),
    "pull bracket server": (lambda w: pull_with(w, api.AuthConfig(
        username="u", password="p", server_address="[")), {grpc.StatusCode.INVALID_ARGUMENT}),
    "pod name no hostname": (lambda w: run_pod_with(w, **{"hostname": "",
                                                          "metadata.name": "Not_A_Host.name-"}),
                             {grpc.StatusCode.INVALID_ARGUMENT}),
    "relative log_directory": (lambda w: run_pod_with(w, log_directory="../../etc-rel"),
                               {grpc.StatusCode.INVALID_ARGUMENT}),
    # A value that long is echoed by the refusal: the status stays small.
    "10 KB runtime handler": (lambda w: run_pod_with(w, runtime_handler="h" * 10_000),
                              {grpc.StatusCode.INVALID_ARGUMENT}),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_values(world: World, case: str) -> None:
    runtime = world.n.daemon.runtime
    before = {c.id for c in runtime.ListContainers(api.ListContainersRequest(), timeout=10)
              .containers}
    attempt, allowed = HOSTILE[case]
    code, message = attempt(world)
    assert_answer(case, code, message)
    assert code in allowed, f"{case}: {code.name}: {message[:300]!r}"
    if code != grpc.StatusCode.OK:
        after = {c.id for c in runtime.ListContainers(api.ListContainersRequest(), timeout=10)
                 .containers}
        # A refused create leaves no container behind; one whose start was
        # refused stays created, as with CRI-O, and the kubelet removes it.
        for extra in after - before:
            status = world.n.status(extra)
            assert status.state in (api.CONTAINER_CREATED, api.CONTAINER_EXITED), case
            runtime.RemoveContainer(api.RemoveContainerRequest(container_id=extra), timeout=30)
        assert "not executable" in case or after == before, after - before


# --- what must hold afterwards ---------------------------------------------

def test_no_worker_restarted(world: World) -> None:
    workers = world.n.daemon.workers()
    assert {key: w["restarts"] for key, w in workers.items() if w["restarts"]} == {}


def test_nothing_outside_the_state_dirs(world: World) -> None:
    now = listing()
    added = {d: sorted(now[d] - world.before.get(d, set())) for d in now}
    assert {d: names for d, names in added.items() if names} == {}


def test_nothing_left_once_every_pod_is_removed(world: World) -> None:
    world.n.remove_all_pods()
    daemon = world.n.daemon
    assert not daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items
    cgroups = [os.path.join(root, d) for c in os.listdir("/sys/fs/cgroup")
               for root, dirs, _ in os.walk(f"/sys/fs/cgroup/{c}{CGROUP_PREFIX}") for d in dirs]
    assert cgroups == []
    assert daemon.mounts() == []
    base = daemon.base
    leftovers = {
        "netns": list((base / "run" / "netns").glob("*")),
        "runtime locks": list((base / "run" / "runtime" / "locks").glob("*")),
        "net locks": list((base / "run" / "net" / "locks").glob("*")),
        "names": list((base / "root" / "runtime" / "names").glob("*")),
        "sandbox records": list((base / "root" / "runtime" / "sandboxes").glob("*")),
        "container records": list((base / "root" / "runtime" / "containers").glob("*")),
        "net records": list((base / "root" / "net" / "pods").glob("*")),
    }
    assert {k: v for k, v in leftovers.items() if v} == {}
