"""What contrib/install.sh leaves on a node: the default pod network
(contrib/default-cni.sh) makes a fresh daemon NetworkReady, and a pod gets
an address from it."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonlib import Daemon, write_config

from podvisor.proto import api_pb2 as api

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "contrib" / "default-cni.sh"
BRIDGE = "podvisor0"
LEASES = Path("/var/lib/cni/networks/podvisor")


def default_cni(directory: Path) -> str:
    out = subprocess.run(["bash", str(SCRIPT), str(directory)], capture_output=True,
                         text=True, check=True, timeout=30)
    return out.stdout


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True,
                          check=False).returncode == 0


def test_the_default_config_is_written_once_and_never_over_another(tmp_path: Path) -> None:
    fresh = tmp_path / "missing" / "net.d"
    said = default_cni(fresh)
    conf = fresh / "10-podvisor-bridge.conflist"
    assert f"wrote {conf}" in said
    doc = json.loads(conf.read_text())
    assert [p["type"] for p in doc["plugins"]] == ["bridge", "portmap"]
    assert doc["plugins"][0]["ipam"]["type"] == "host-local"
    # The subnet overlaps no specific route of this host.
    subnet = ipaddress.ip_network(doc["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                            check=True).stdout.split("\n")
    for route in filter(None, routes):
        dst = route.split()[0]
        if dst != "default":
            assert not subnet.overlaps(ipaddress.ip_network(dst, strict=False)), route
    before = conf.read_text()
    assert "left as it is" in default_cni(fresh)
    assert conf.read_text() == before

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "05-operator.conf").write_text("{}")
    assert "left as it is" in default_cni(theirs)
    assert [p.name for p in theirs.iterdir()] == ["05-operator.conf"]


@pytest.fixture
def fresh_node() -> Iterator[Daemon]:
    """A daemon whose network dir was empty until the install's step ran."""
    had_bridge, had_leases = link_exists(BRIDGE), LEASES.exists()
    base = Path(tempfile.mkdtemp(prefix="pv-"))
    write_config(base)
    default_cni(base / "net.d")
    daemon = Daemon(base, dict(os.environ)).start()
    try:
        yield daemon
    finally:
        daemon.stop()
        daemon.remove_leftovers()
        if not had_bridge and link_exists(BRIDGE):
            subprocess.run(["ip", "link", "del", BRIDGE], check=False)
        if not had_leases:
            shutil.rmtree(LEASES, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_fresh_install_is_network_ready_and_gives_pods_an_address(
        fresh_node: Daemon) -> None:
    rt = fresh_node.runtime
    conditions = {c.type: c for c in rt.Status(api.StatusRequest(), timeout=10).status.conditions}
    assert conditions["NetworkReady"].status, conditions["NetworkReady"].message
    conf = json.loads((fresh_node.cni_dir / "10-podvisor-bridge.conflist").read_text())
    subnet = ipaddress.ip_network(conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
    uid = uuid.uuid4().hex
    pod_id = rt.RunPodSandbox(api.RunPodSandboxRequest(config=api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="fresh", namespace="default", uid=uid),
        hostname="fresh",
        linux=api.LinuxPodSandboxConfig(cgroup_parent=f"/podvisor-test/pod{uid}"))),
        timeout=60).pod_sandbox_id
    try:
        ip = rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                 timeout=10).status.network.ip
        assert ipaddress.ip_address(ip) in subnet
    finally:
        rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
