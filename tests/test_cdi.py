"""CDI devices through the CRI socket: a fake vendor's spec files in a
temp dir (the daemon's ``cdi_spec_dirs``) give a container a device node
(``/dev/null`` under another name), environment variables and a mount."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from podfixtures import IDLE, Node, node

from podvisor.proto import api_pb2 as api

pytestmark = pytest.mark.timeout(240)

YAML_SPEC = """\
cdiVersion: "0.6.0"
kind: podvisor.test/fake
containerEdits:
  env: [FAKE_VENDOR=yes]
devices:
  - name: null0
    containerEdits:
      deviceNodes:
        - path: /dev/fake-null
          hostPath: /dev/null
      env: [FAKE_DEVICE=null0]
      mounts:
        - hostPath: {share}
          containerPath: /opt/fake
          options: [ro, rbind]
"""


@dataclass
class World:
    n: Node
    pod_id: str
    pod: api.PodSandboxConfig
    specs: Path

    def create(self, name: str, devices: tuple[str, ...] = (),
               annotations: dict[str, str] | None = None) -> str:
        config = self.n.container_config(name, IDLE, annotations=annotations or {})
        config.CDI_devices.extend(api.CDIDevice(name=d) for d in devices)
        return self.n.create(self.pod_id, self.pod, config)


@pytest.fixture(scope="module")
def w() -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="pvcdi-"))
    try:
        specs, share = base / "cdi", base / "share"
        specs.mkdir()
        share.mkdir()
        (share / "lib.txt").write_text("from the vendor\n")
        (specs / "fake.yaml").write_text(YAML_SPEC.format(share=share))
        (specs / "other.json").write_text(json.dumps({
            "cdiVersion": "0.6.0", "kind": "podvisor.test/other",
            "devices": [{"name": "zero", "containerEdits": {
                "deviceNodes": [{"path": "/dev/other-zero", "hostPath": "/dev/zero"}],
                "env": ["OTHER=zero"]}}]}))
        with node(config=f'[podvisor.runtime]\ncdi_spec_dirs = ["{specs}"]\n') as n:
            config = n.pod_config("cdi")
            yield World(n, n.run_pod(config), config, specs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_cdi_device_brings_its_node_env_and_mount(w: World) -> None:
    cid = w.create("gpu", ("podvisor.test/fake=null0",))
    w.n.start(cid)
    w.n.wait_state(cid, api.CONTAINER_RUNNING)
    env = w.n.exec(cid, "env").stdout.decode().splitlines()
    assert "FAKE_DEVICE=null0" in env and "FAKE_VENDOR=yes" in env
    listing = w.n.exec(cid, "ls", "-l", "/dev/fake-null").stdout.decode()
    assert listing.startswith("c") and "1,   3" in listing, listing
    # The device cgroup lets it through.
    assert w.n.exec(cid, "sh", "-c", "echo gone > /dev/fake-null").exit_code == 0
    assert w.n.exec(cid, "cat", "/opt/fake/lib.txt").stdout == b"from the vendor\n"


def test_the_annotation_form_and_json_specs_work_too(w: World) -> None:
    cid = w.create("annotated", annotations={"cdi.k8s.io/other": "podvisor.test/other=zero"})
    w.n.start(cid)
    w.n.wait_state(cid, api.CONTAINER_RUNNING)
    assert "OTHER=zero" in w.n.exec(cid, "env").stdout.decode().splitlines()
    assert w.n.exec(cid, "head", "-c", "3", "/dev/other-zero").stdout == b"\0\0\0"


def test_unknown_devices_and_broken_specs_are_refused_leaving_nothing(w: World) -> None:
    for devices, code in ((("podvisor.test/fake=missing",), grpc.StatusCode.NOT_FOUND),
                          (("not-qualified",), grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as caught:
            w.create("refused", devices)
        assert caught.value.code() == code, caught.value.details()
        assert devices[0] in (caught.value.details() or "")
    broken = w.specs / "zz-broken.yaml"
    broken.write_text("kind: [unclosed\n")
    try:
        with pytest.raises(grpc.RpcError) as caught:
            w.create("refused", ("podvisor.test/fake=null0",))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "zz-broken.yaml" in (caught.value.details() or "")
    finally:
        broken.unlink()
    listed = w.n.daemon.runtime.ListContainers(api.ListContainersRequest(), timeout=10)
    assert "refused" not in {c.metadata.name for c in listed.containers}
