"""The runtime pool's records and the CRI messages built from them, without
processes or runc: reserve writes the config as the serialized protobuf,
status and list answer CRI messages built from the record, and a record of
the previous build (config as a ``MessageToDict`` dict) is upgraded once
by the start-up reconcile."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from google.protobuf import json_format

from podvisor.proto import api_pb2 as api
from podvisor.proto import runtime_ops as ops
from podvisor.proto.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from podvisor.workers.base import OpContext
from podvisor.workers.runtime import configs, containers, reconcile, sandbox
from podvisor.workers.runtime.cgroup import hierarchy
from podvisor.workers.runtime.cgroup.driver import Driver
from podvisor.workers.runtime.handlers import Runtimes
from podvisor.workers.runtime.layout import Layout
from podvisor.workers.runtime.monitor import Handler

SANDBOX_ID = "a" * 64
CONTAINER_ID = "c" * 64
IMAGE = ops.ImageRef(id="sha256:" + "1" * 64, repo_tags=["busybox:1"], repo_digests=[])


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout.from_settings({"root": str(tmp_path / "root"),
                                 "runroot": str(tmp_path / "run")})


def runtimes() -> Runtimes:
    return Runtimes({"runc": Handler("runc", "/usr/sbin/runc", "/run/runc")}, "runc",
                    Driver("cgroupfs", hierarchy.host()))


def ctx() -> OpContext:
    return OpContext(request_id=b"1", op="test", deadline=time.monotonic() + 10)


def pod_config(**extra: object) -> api.PodSandboxConfig:
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="web", namespace="default", uid="u1", attempt=2),
        labels={"app": "web"}, annotations={"note": "x"}, log_directory="/var/log/pods/u1",
        **extra)  # type: ignore[arg-type]


def container_config() -> api.ContainerConfig:
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name="app", attempt=1),
        image=api.ImageSpec(image="busybox:1"), labels={"tier": "front"},
        stop_signal=api.SIGNAL_SIGINT, log_path="app/0.log")


def reserve_pod(layout: Layout, config: api.PodSandboxConfig) -> ops.SandboxReserved:
    return sandbox.reserve(layout, runtimes(), "pause:1", ctx(), ops.SandboxReserve(
        id=SANDBOX_ID, config=config.SerializeToString(), runtime_handler=""))


def ready_pod(layout: Layout) -> None:
    """A reserved pod, marked ready as sandbox_start would leave it."""
    reserve_pod(layout, pod_config())
    record = layout.sandboxes.load(SANDBOX_ID)
    assert record is not None
    record.update(state=sandbox.READY, ips=["10.88.0.5", "fd00::5"])
    layout.sandboxes.save(SANDBOX_ID, record)


def reserve_container(layout: Layout, sandbox_id: str = SANDBOX_ID) -> ops.ContainerReserved:
    return containers.reserve(layout, ctx(), ops.ContainerReserve(
        id=CONTAINER_ID, sandbox_id=sandbox_id,
        config=container_config().SerializeToString(), image=IMAGE))


# ---- reserve ----------------------------------------------------------------------


def test_sandbox_reserve_answers_the_facts_and_keeps_the_config_serialized(
        layout: Layout) -> None:
    host = pod_config(linux=api.LinuxPodSandboxConfig(
        security_context=api.LinuxSandboxSecurityContext(
            namespace_options=api.NamespaceOption(network=api.NODE, pid=api.CONTAINER))))
    reserved = reserve_pod(layout, host)
    assert reserved == ops.SandboxReserved(
        id=SANDBOX_ID, name="k8s_web_default_u1_2", runtime_handler="runc",
        host_network=True, pause_image="")  # no shared PID namespace: no infra
    record = layout.sandboxes.load(SANDBOX_ID)
    assert record is not None and "config" not in record
    assert configs.sandbox_config(record) == host
    assert record["modes"] == {"network": "NODE", "pid": "CONTAINER", "ipc": "POD"}
    # Again with the same id: the same answer, one record.
    assert reserve_pod(layout, host) == reserved
    assert layout.sandboxes.ids() == [SANDBOX_ID]


def test_sandbox_reserve_refuses_bad_input_before_anything_exists(layout: Layout) -> None:
    with pytest.raises(InvalidArgument, match="not a serialized PodSandboxConfig"):
        sandbox.reserve(layout, runtimes(), "", ctx(), ops.SandboxReserve(
            id=SANDBOX_ID, config=b"\xff\xff", runtime_handler=""))
    with pytest.raises(InvalidArgument, match=r"metadata\.uid is required"):
        reserve_pod(layout, api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="web", namespace="default")))
    with pytest.raises(InvalidArgument, match="64 lowercase hex"):
        sandbox.reserve(layout, runtimes(), "", ctx(), ops.SandboxReserve(
            id="../x", config=pod_config().SerializeToString(), runtime_handler=""))
    assert layout.sandboxes.ids() == []


def test_container_reserve_is_the_one_check_that_the_pod_is_ready(layout: Layout) -> None:
    reserve_pod(layout, pod_config())  # still creating
    with pytest.raises(FailedPrecondition, match="not ready"):
        reserve_container(layout)
    with pytest.raises(NotFound):
        reserve_container(layout, "b" * 64)
    assert layout.containers.ids() == []


def test_container_reserve_answers_name_and_pod_and_refuses_a_taken_name(
        layout: Layout) -> None:
    ready_pod(layout)
    # The kubelet may name the pod by a prefix of its id.
    reserved = reserve_container(layout, SANDBOX_ID[:12])
    assert reserved == ops.ContainerReserved(id=CONTAINER_ID, name="k8s_app_web_default_u1_1",
                                             sandbox_id=SANDBOX_ID)
    record = layout.containers.load(CONTAINER_ID)
    assert record is not None and configs.container_config(record) == container_config()
    with pytest.raises(AlreadyExists):
        containers.reserve(layout, ctx(), ops.ContainerReserve(
            id="d" * 64, sandbox_id=SANDBOX_ID,
            config=container_config().SerializeToString(), image=IMAGE))


# ---- CRI messages built from records -------------------------------------------------


def test_sandbox_status_and_list_items_are_cri_messages_from_the_record(
        layout: Layout) -> None:
    ready_pod(layout)
    record = layout.sandboxes.load(SANDBOX_ID)
    assert record is not None
    status = sandbox.cri_status(record)
    assert (status.id, status.state, status.runtime_handler) == (
        SANDBOX_ID, api.SANDBOX_READY, "runc")
    assert status.metadata == pod_config().metadata
    assert dict(status.labels) == {"app": "web"}
    assert dict(status.annotations) == {"note": "x"}
    assert status.network.ip == "10.88.0.5"
    assert [ip.ip for ip in status.network.additional_ips] == ["fd00::5"]
    assert status.linux.namespaces.options.network == api.POD
    listed = sandbox.list_sandboxes(layout, ctx(), ops.SandboxListQuery())
    assert [api.PodSandbox.FromString(i).id for i in listed.items] == [SANDBOX_ID]
    for flt, found in ((api.PodSandboxFilter(label_selector={"app": "db"}), 0),
                       (api.PodSandboxFilter(id=SANDBOX_ID[:5]), 1),
                       (api.PodSandboxFilter(state=api.PodSandboxStateValue(
                           state=api.SANDBOX_NOTREADY)), 0)):
        query = ops.SandboxListQuery(filter=flt.SerializeToString())
        assert len(sandbox.list_sandboxes(layout, ctx(), query).items) == found


def test_container_status_and_list_items_are_cri_messages_from_the_record(
        layout: Layout) -> None:
    ready_pod(layout)
    reserve_container(layout)
    record = layout.containers.load(CONTAINER_ID)
    assert record is not None
    record.update(state=containers.EXITED, exit_code=3, started_at=5, finished_at=7,
                  user={"uid": 1000, "gid": 1000, "additionalGids": [10]})
    status = containers.cri_status(record)
    assert (status.state, status.exit_code, status.started_at, status.finished_at) == (
        api.CONTAINER_EXITED, 3, 5, 7)
    assert status.metadata == container_config().metadata
    assert (status.image.image, status.image_ref) == ("busybox:1", IMAGE.id)
    assert status.stop_signal == api.SIGNAL_SIGINT
    assert list(status.user.linux.supplemental_groups) == [10]
    # Creating ones are listed for a pod's removal only.
    assert containers.list_containers(layout, ctx(), ops.ContainerListQuery()).items == []
    listed = containers.list_containers(layout, ctx(), ops.ContainerListQuery(
        sandbox_id=SANDBOX_ID, all=True))
    item = api.Container.FromString(listed.items[0])
    assert (item.id, item.pod_sandbox_id, item.state) == (
        CONTAINER_ID, SANDBOX_ID, api.CONTAINER_UNKNOWN)


# ---- records of the previous build -----------------------------------------------------


def legacy(record: dict[str, object], config: api.PodSandboxConfig | api.ContainerConfig
           ) -> dict[str, object]:
    """``record`` as the previous build wrote it: the config as a dict."""
    del record[configs.FIELD]
    record["config"] = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return record


def test_reconcile_upgrades_records_of_the_previous_build_once(
        layout: Layout, caplog: pytest.LogCaptureFixture) -> None:
    ready_pod(layout)
    reserve_container(layout)
    pod, container = layout.sandboxes.load(SANDBOX_ID), layout.containers.load(CONTAINER_ID)
    assert pod is not None and container is not None
    layout.sandboxes.save(SANDBOX_ID, legacy(pod, pod_config()))
    layout.containers.save(CONTAINER_ID, legacy(container, container_config()))
    reconcile._upgrade(layout.sandboxes, api.PodSandboxConfig)
    reconcile._upgrade(layout.containers, api.ContainerConfig)
    pod, container = layout.sandboxes.load(SANDBOX_ID), layout.containers.load(CONTAINER_ID)
    assert pod is not None and container is not None
    assert "config" not in pod and configs.sandbox_config(pod) == pod_config()
    assert "config" not in container and configs.container_config(container) \
        == container_config()
    # Nothing is left to do the second time.
    caplog.clear()
    reconcile._upgrade(layout.sandboxes, api.PodSandboxConfig)
    assert "Upgraded" not in caplog.text


def test_a_legacy_record_that_does_not_parse_stays_and_fails_its_ops_by_name(
        layout: Layout, caplog: pytest.LogCaptureFixture) -> None:
    ready_pod(layout)
    pod = layout.sandboxes.load(SANDBOX_ID)
    assert pod is not None
    pod = legacy(pod, pod_config())
    pod["config"] = {"metadata": {"attempt": "many"}}
    layout.sandboxes.save(SANDBOX_ID, pod)
    reconcile._upgrade(layout.sandboxes, api.PodSandboxConfig)
    assert "Cannot upgrade the record of " + SANDBOX_ID in caplog.text
    with pytest.raises(Internal, match="written by an older podvisor"):
        sandbox.cri_status(layout.sandboxes.load(SANDBOX_ID) or {})
