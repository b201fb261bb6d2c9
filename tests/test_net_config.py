"""Network config discovery, readiness, CNI versions and op arguments.

Everything runs the real Debian plugins except the CNI 1.1.0 protocol test:
Debian's plugins stop at spec 1.0.0, so STATUS and 1.1.0 chaining are
exercised with a small spec-following plugin the test writes
(``TEST_PLUGIN``), which records what it was given.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netfixtures import CniWorld, private_cni_world

from podvisor.proto.errors import FailedPrecondition, InvalidArgument

TEST_PLUGIN = """\
import json, os, sys
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
if cmd == "VERSION":
    print(json.dumps({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}))
    sys.exit(0)
with open(conf["log"], "a") as log:
    env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
    log.write(json.dumps({"cmd": cmd, "tag": conf["tag"], "env": env, "conf": conf}) + "\\n")
if cmd == "STATUS" and os.path.exists(conf["log"] + ".down"):
    print(json.dumps({"cniVersion": "1.1.0", "code": 50, "msg": "plugin not available",
                      "details": "the test said so"}))
    sys.exit(1)
if cmd == "ADD":
    result = conf.get("prevResult") or {"cniVersion": "1.1.0", "interfaces": [], "ips": []}
    result["interfaces"].append({"name": "eth0", "sandbox": os.environ["CNI_NETNS"]})
    result["ips"].append({"address": conf["address"],
                          "interface": len(result["interfaces"]) - 1})
    print(json.dumps(result))
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[CniWorld]:
    with private_cni_world(tmp_path) as w:
        yield w


def pod(pod_id: str, **extra: Any) -> dict[str, Any]:
    return {"pod_id": pod_id, "name": "web", "namespace": "team-a", "uid": "u-1",
            "port_mappings": [], "host_network": False, "cgroup_parent": "", **extra}


def test_network_turns_ready_when_a_conflist_appears(world: CniWorld) -> None:
    status = world.call("status", {}, world.service(network_dir="/nonexistent/net.d"))
    assert (status["network_ready"], status["reason"]) == (False, "NetworkPluginNotReady")
    assert "/nonexistent/net.d" in status["message"]

    status = world.call("status", {})
    assert (status["network_ready"], status["reason"]) == (False, "NetworkPluginNotReady")
    assert "no CNI network config" in status["message"]

    path = world.write_conflist()
    status = world.call("status", {})
    assert status["network_ready"] is True
    assert (status["config_file"], status["network_name"]) == (str(path), world.net_name)

    path.unlink()
    assert world.call("status", {})["network_ready"] is False


def test_broken_conflists_are_named_with_file_and_plugin(world: CniWorld) -> None:
    bad_json = world.network_dir / "05-bad.conflist"
    bad_json.write_text('{"cniVersion": "1.0.0", "name": "x", "plugins": [')
    no_binary = world.write_conflist(
        [world.bridge_plugin(), {"type": "no-such-plugin"}], filename="07-nobin.conflist")

    status = world.call("status", {})
    assert status["network_ready"] is False
    assert str(bad_json) in status["message"]
    assert str(no_binary) in status["message"] and "'no-such-plugin'" in status["message"]
    assert set(status["invalid_configs"]) == {str(bad_json), str(no_binary)}

    with pytest.raises(FailedPrecondition) as info:
        world.call("setup", pod("p-broken"))
    assert "'no-such-plugin'" in info.value.message and str(no_binary) in info.value.message
    assert world.namespaces() == []

    # A valid file later in lexical order wins; the broken ones stay listed.
    good = world.write_conflist(filename="10-good.conflist")
    status = world.call("status", {})
    assert status["network_ready"] and status["config_file"] == str(good)
    assert set(status["invalid_configs"]) == {str(bad_json), str(no_binary)}


def test_cni_0_4_0_single_plugin_conf(world: CniWorld) -> None:
    doc = {**world.bridge_plugin(), "cniVersion": "0.4.0", "name": world.net_name}
    (world.network_dir / "10-single.conf").write_text(json.dumps(doc))
    result = world.call("setup", pod("p-040"))
    record = world.layout.records.load("p-040")
    assert result["ips"] and record is not None and record["result"]["cniVersion"] == "0.4.0"
    assert world.call("teardown", {"pod_id": "p-040"})["found"]
    assert world.leases() == []


def test_cni_1_1_0_config_with_plugins_that_stop_at_1_0_0(world: CniWorld) -> None:
    path = world.write_conflist(version="1.1.0")
    status = world.call("status", {})
    assert status["network_ready"] is False
    assert str(path) in status["message"]
    assert "'bridge'" in status["message"] and "1.1.0" in status["message"]


def test_cni_1_1_0_status_chaining_and_capabilities(world: CniWorld, tmp_path: Path) -> None:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    plugin = plugin_dir / "pvtest-spec"
    plugin.write_text(f"#!{sys.executable}\n{TEST_PLUGIN}")
    plugin.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    first = {"type": "pvtest-spec", "tag": "first", "log": str(log), "address": "10.1.0.5/24",
             "capabilities": {"dns": True, "portMappings": False}}
    second = {"type": "pvtest-spec", "tag": "second", "log": str(log),
              "address": "fd00:1::5/64", "capabilities": {"portMappings": True}}
    world.write_conflist([first, second], version="1.1.0")

    net = world.service(plugin_dirs=[str(plugin_dir)])

    def call(op: str, args: dict[str, Any]) -> dict[str, Any]:
        return world.call(op, args, net)

    def calls(cmd: str) -> list[dict[str, Any]]:
        return [c for c in map(json.loads, log.read_text().splitlines()) if c["cmd"] == cmd]

    assert call("status", {})["network_ready"] is True
    assert [c["tag"] for c in calls("STATUS")] == ["first", "second"]
    Path(f"{log}.down").touch()
    status = call("status", {})
    assert status["network_ready"] is False
    assert "code 50" in status["message"] and "plugin not available" in status["message"]
    os.unlink(f"{log}.down")

    dns = {"servers": ["10.96.0.10"], "searches": ["team-a.svc.cluster.local"],
           "options": ["ndots:5"]}
    result = call("setup", pod("p-110", dns=dns, port_mappings=[
        {"container_port": 80, "host_port": 8080, "protocol": "TCP"}]))
    assert result["ips"] == ["10.1.0.5", "fd00:1::5"]
    add1, add2 = calls("ADD")
    assert "prevResult" not in add1["conf"]
    assert add2["conf"]["prevResult"]["ips"] == [{"address": "10.1.0.5/24", "interface": 0}]
    assert add1["conf"]["runtimeConfig"] == {"dns": dns}
    assert add2["conf"]["runtimeConfig"] == {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    assert add1["conf"]["name"] == world.net_name
    assert add1["conf"]["cniVersion"] == "1.1.0"
    assert add1["env"]["CNI_CONTAINERID"] == "p-110"
    assert add1["env"]["CNI_IFNAME"] == "eth0"
    assert add1["env"]["CNI_NETNS"] == result["netns_path"]
    assert add1["env"]["CNI_PATH"] == str(plugin_dir)
    assert add1["env"]["CNI_ARGS"] == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web;"
        "K8S_POD_INFRA_CONTAINER_ID=p-110;K8S_POD_UID=u-1")

    record = world.layout.records.load("p-110")
    assert record is not None
    call("teardown", {"pod_id": "p-110"})
    dels = calls("DEL")
    assert [c["tag"] for c in dels] == ["second", "first"]
    assert all(c["conf"]["prevResult"] == record["result"] for c in dels)


@pytest.mark.parametrize(("args", "field"), [
    # Values the worker checks.
    (pod("../etc"), "pod_id"),
    (pod("ok", name="a;b"), "name"),
    (pod("ok", port_mappings=[{"container_port": 0, "host_port": 80}]), "container_port"),
    (pod("ok", port_mappings=[{"container_port": 80, "protocol": "ICMP"}]), "protocol"),
    (pod("ok", dns={"servers": ["not-an-ip"]}), "dns.servers"),
    # Types, checked against the contract before the op runs.
    (pod("ok", port_mappings=[{"container_port": 80, "host_port": "8080"}]),
     "`$.port_mappings[0].host_port`"),
    (pod("ok", port_mappings=[{"container_port": 80, "protocol": 1}]),
     "`$.port_mappings[0].protocol`"),
    (pod("ok", dns={"servers": "10.96.0.10"}), "`$.dns.servers`"),
    ({k: v for k, v in pod("ok").items() if k != "uid"}, "`uid`"),
    (pod("ok", bandwidth={"ingress_rate": 1}), "`bandwidth`"),
])
def test_bad_arguments_are_invalid_and_named(world: CniWorld, args: dict[str, Any],
                                             field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        world.call("setup", args)
    assert field in info.value.message
    assert world.namespaces() == []
