"""Pod networks with the real Debian CNI plugins: setup, traffic, teardown.

Each test gets a private bridge, 10.x/24, host-local data dir and run dirs
(netfixtures.CniWorld); ops are called directly on the pool's service
(``world.net``, built once as a worker builds it) with a real OpContext and
the maps the bus carries (``world.call``), the way a worker thread calls them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from netfixtures import CniWorld, HostGuard, in_netns, ping, private_cni_world
from pyroute2 import IPRoute

from podvisor.proto.errors import BusError, FailedPrecondition, Internal
from podvisor.workers.net import cni, cniconf, netns, nodeip, store

N_PODS = 20


@pytest.fixture
def world(tmp_path: Path) -> Iterator[CniWorld]:
    with private_cni_world(tmp_path) as w:
        yield w


def pod_args(i: int, **extra: Any) -> dict[str, Any]:
    return {"pod_id": f"pod{i:02d}{os.urandom(3).hex()}", "name": f"web-{i}",
            "namespace": "default", "uid": f"uid-{i}", "port_mappings": [], "dns": None,
            "host_network": False, "cgroup_parent": "", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_once(sock: socket.socket, reply: bytes) -> threading.Thread:
    def run() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(reply + conn.recv(64))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def lo_is_up(path: str) -> bool:
    def probe() -> bool:
        with IPRoute() as ipr:
            return bool(ipr.get_links(1)[0]["flags"] & 1)  # IFF_UP
    return in_netns(path, probe)


def test_twenty_pods_in_parallel_get_ips_traffic_and_a_host_port(world: CniWorld) -> None:
    world.write_conflist()
    host_port = free_port()
    pods = [pod_args(i) for i in range(N_PODS)]
    pods[0]["port_mappings"] = [{"container_port": 8080, "host_port": host_port,
                                 "protocol": "TCP", "host_ip": ""},
                                {"container_port": 9, "host_port": 0, "protocol": "UDP"}]

    with ThreadPoolExecutor(N_PODS) as pool:
        results = list(pool.map(lambda a: world.call("setup", a), pods))

    ips = [r["ips"][0] for r in results]
    assert len(set(ips)) == N_PODS
    assert all(ip in {str(h) for h in world.subnet.hosts()} for ip in ips)
    assert sorted(world.leases()) == sorted(ips)
    for pod, result in zip(pods, results, strict=True):
        assert result["netns_path"] == os.path.join(world.netns_dir, pod["pod_id"])
        assert netns.exists(result["netns_path"])
        assert lo_is_up(result["netns_path"])
    assert len(world.bridge_ports()) == N_PODS

    # Every pod reaches the gateway and its neighbour.
    def reach(i: int) -> list[str]:
        path = results[i]["netns_path"]
        return [f"pod {i} -> {dst}: {p.stdout}{p.stderr}"
                for dst in (world.gateway, ips[(i + 1) % N_PODS])
                if (p := ping(path, dst)).returncode != 0]

    with ThreadPoolExecutor(N_PODS) as pool:
        failures = [f for fs in pool.map(reach, range(N_PODS)) for f in fs]
    assert failures == []

    # A server in pod 0 answers on its hostPort at 127.0.0.1 through portmap.
    def listen() -> socket.socket:
        s = socket.socket()
        s.bind(("0.0.0.0", 8080))
        s.listen(1)
        return s

    server = in_netns(results[0]["netns_path"], listen)
    with server:
        thread = serve_once(server, b"hello from pod0:")
        with socket.create_connection(("127.0.0.1", host_port), timeout=10) as client:
            client.sendall(b"ping")
            client.shutdown(socket.SHUT_WR)
            answer = b"".join(iter(lambda: client.recv(64), b""))
        thread.join(10)
    assert answer == b"hello from pod0:ping"

    with ThreadPoolExecutor(N_PODS) as pool:
        torn = list(pool.map(
            lambda a: world.call("teardown", {"pod_id": a["pod_id"]}), pods))
    assert all(t["found"] for t in torn)
    assert world.leases() == []
    assert world.namespaces() == []
    assert world.mounts() == []
    assert world.bridge_ports() == []
    assert world.layout.records.ids() == []
    assert os.listdir(world.layout.lock_dir) == []
    assert not any("CNI-DN-" in line for line in HostGuard().cni_lines())

    # Teardown is idempotent (CRI: StopPodSandbox may be called again).
    again = [world.call("teardown", {"pod_id": a["pod_id"]}) for a in pods]
    assert [t["found"] for t in again] == [False] * N_PODS


def test_setup_is_idempotent(world: CniWorld) -> None:
    world.write_conflist()
    args = pod_args(1)
    first = world.call("setup", args)
    second = world.call("setup", args)
    assert second == first
    assert first["network_name"] == world.net_name
    assert world.leases() == first["ips"]

    assert world.call("teardown", {"pod_id": args["pod_id"]})["found"]
    assert world.layout.records.ids() == []
    assert world.call("teardown", {"pod_id": "never-seen"}) == {
        "pod_id": "never-seen", "found": False}


def test_ensure_netns_then_setup_makes_one_network(world: CniWorld) -> None:
    """RunPodSandbox's order: the namespace, then the chain while the infra
    starts in it (supervisor/rpc/sandbox.py)."""
    world.write_conflist()
    args = pod_args(7)
    made = world.call("ensure_netns", args)
    assert made["ips"] == [] and netns.exists(made["netns_path"])
    assert lo_is_up(made["netns_path"])
    assert world.leases() == []
    assert world.layout.records.load(args["pod_id"])["state"] == store.NETNS
    assert world.call("ensure_netns", args) == made

    done = world.call("setup", args)
    assert done["netns_path"] == made["netns_path"]
    assert world.leases() == done["ips"] and done["ips"]
    assert world.namespaces() == [args["pod_id"]]
    # Once set up, both answer the pod's network.
    assert world.call("ensure_netns", args) == done == world.call("setup", args)
    assert world.call("teardown", {"pod_id": args["pod_id"]})["found"]
    assert (world.leases(), world.namespaces(), world.layout.records.ids()) == ([], [], [])


def test_a_namespace_only_pod_is_torn_down_without_plugins(world: CniWorld) -> None:
    world.write_conflist()
    args = pod_args(8)
    world.call("ensure_netns", args)
    report = world.call("reconcile", {"live_pod_ids": [args["pod_id"]]})
    assert report["not_ready"] == [args["pod_id"]]
    # No plugin has run for it, so none is asked to DEL: with no plugin to
    # be found the teardown still succeeds.
    empty = world.base / "no-plugins"
    empty.mkdir()
    assert world.call("teardown", {"pod_id": args["pod_id"]},
                      world.service(plugin_dirs=[str(empty)]))["found"]
    assert (world.namespaces(), world.layout.records.ids()) == ([], [])


def test_ensure_netns_refuses_a_host_network_pod(world: CniWorld) -> None:
    with pytest.raises(FailedPrecondition):
        world.call("ensure_netns", pod_args(10, host_network=True))
    assert (world.namespaces(), world.layout.records.ids()) == ([], [])


def test_vanished_namespace_is_reported_then_rebuilt(world: CniWorld) -> None:
    world.write_conflist()
    args = pod_args(2)
    first = world.call("setup", args)
    netns.remove(first["netns_path"])

    report = world.call("reconcile", {"live_pod_ids": [args["pod_id"]]})
    assert report["not_ready"] == [args["pod_id"]]
    assert report["torn_down"] == []

    # A new setup releases the old lease (DEL) and builds a fresh namespace.
    again = world.call("setup", args)
    assert netns.exists(again["netns_path"])
    assert world.leases() == again["ips"]
    world.call("teardown", {"pod_id": args["pod_id"]})
    assert world.leases() == []


def test_reconcile_tears_down_pods_that_are_not_live(world: CniWorld) -> None:
    world.write_conflist()
    pods = [pod_args(i) for i in range(3)]
    results = [world.call("setup", a) for a in pods]
    live = pods[0]["pod_id"]

    report = world.call("reconcile", {"live_pod_ids": [live]})
    assert sorted(report["torn_down"]) == sorted(a["pod_id"] for a in pods[1:])
    assert report["failed"] == {} and report["not_ready"] == []
    assert world.namespaces() == [live]
    assert world.leases() == results[0]["ips"]
    assert len(world.bridge_ports()) == 1


def test_teardown_releases_a_pod_whose_setup_died_half_way(world: CniWorld) -> None:
    """What a worker killed between ADD and the ready record leaves behind."""
    path = world.write_conflist()
    args = pod_args(3)
    layout = world.layout
    ns_path = netns.path_for(layout.netns_dir, args["pod_id"])
    record = {"pod_id": args["pod_id"], "host_network": False, "state": store.SETTING_UP,
              "netns_path": ns_path, "config_file": str(path),
              "config": json.loads(path.read_text()), "ifname": "eth0",
              "cni_args": [], "capability_args": {}}
    layout.records.save(args["pod_id"], record)
    netns.create(ns_path)
    net = cniconf.parse(str(path))
    runner = cni.Runner(plugin_dirs=layout.plugin_dirs, deadline=time.monotonic() + 30)
    cni.add(runner, net, cni.Invocation(args["pod_id"], ns_path, "eth0"))
    assert len(world.leases()) == 1

    report = world.call("reconcile", {"live_pod_ids": [args["pod_id"]]})
    assert (report["not_ready"], report["torn_down"]) == ([args["pod_id"]], [])
    assert world.call("teardown", {"pod_id": args["pod_id"]})["found"]
    assert world.leases() == []
    assert world.namespaces() == []
    assert world.bridge_ports() == []


def test_teardown_survives_a_failing_plugin_and_retries_it(world: CniWorld) -> None:
    world.write_conflist()
    args = pod_args(4, port_mappings=[{"container_port": 80, "host_port": free_port()}])
    world.call("setup", args)

    # portmap disappears: its DEL fails, but bridge/host-local still run.
    partial = world.base / "plugins-without-portmap"
    partial.mkdir()
    for plugin in ("bridge", "host-local", "loopback"):
        os.symlink(f"/usr/lib/cni/{plugin}", partial / plugin)
    with pytest.raises(BusError) as info:
        world.call("teardown", {"pod_id": args["pod_id"]},
                   world.service(plugin_dirs=[str(partial)]))
    assert "'portmap'" in info.value.message
    assert info.value.details["failures"][0]["plugin"] == "portmap"
    assert world.leases() == []
    assert world.namespaces() == []
    assert world.bridge_ports() == []
    assert world.layout.records.ids() == [args["pod_id"]]
    assert any("CNI-DN-" in line for line in HostGuard().cni_lines())

    # With portmap back the retry finishes the job.
    assert world.call("teardown", {"pod_id": args["pod_id"]})["found"]
    assert world.layout.records.ids() == []
    assert not any("CNI-DN-" in line for line in HostGuard().cni_lines())


def test_a_plugin_error_reaches_the_caller(world: CniWorld) -> None:
    wanted = str(world.subnet.network_address + 77)
    world.write_conflist([world.bridge_plugin(ranges=[[{
        "subnet": str(world.subnet), "rangeStart": wanted, "rangeEnd": wanted}]]),
        {"type": "loopback"}])
    result = world.call("setup", pod_args(5))
    assert result["ips"] == [wanted]

    # The range is spent: host-local refuses, and its words reach the caller.
    with pytest.raises(Internal) as info:
        world.call("setup", pod_args(6))
    details = info.value.details
    assert details["plugin"] == "bridge" and details["command"] == "ADD"
    assert details["cni_msg"]
    assert wanted in info.value.message
    assert details["config_file"] in info.value.message
    assert world.leases() == [wanted]
    assert world.namespaces() == [result["pod_id"]]
    assert world.layout.records.ids() == [result["pod_id"]]


def test_dual_stack_lists_ipv4_first(world: CniWorld) -> None:
    v6 = f"fd{os.urandom(1).hex()}:{os.urandom(2).hex()}:{os.urandom(2).hex()}::/64"
    bridge = world.bridge_plugin(ranges=[[{"subnet": v6}],
                                  [{"subnet": str(world.subnet)}]])
    world.write_conflist([bridge, {"type": "loopback"}])
    result = world.call("setup", pod_args(7))
    assert len(result["ips"]) == 2
    assert "." in result["ips"][0] and ":" in result["ips"][1]
    world.call("teardown", {"pod_id": result["pod_id"]})
    assert world.leases() == []


def test_host_network_pods_get_the_node_ips(world: CniWorld) -> None:
    args = pod_args(9, host_network=True)
    result = world.call("setup", args)  # no network config needed
    assert result["host_network"] and result["netns_path"] == ""
    assert result["ips"] == nodeip.node_ips() and result["ips"]
    assert world.call("setup", args) == result
    assert world.call("teardown", {"pod_id": args["pod_id"]})["found"]
    assert world.namespaces() == []


def test_a_setup_cut_short_keeps_the_namespace_the_infra_may_run_in(world: CniWorld) -> None:
    """The net worker killed mid-ADD and setup retried: the chain is undone
    and run again in the same namespace (the pod's infra, started beside
    the chain, is in it)."""
    world.write_conflist()
    args = pod_args(11)
    made = world.call("ensure_netns", args)
    before = os.stat(made["netns_path"]).st_ino
    record = world.layout.records.load(args["pod_id"])
    world.layout.records.save(args["pod_id"], {**record, "state": store.SETTING_UP})
    done = world.call("setup", args)
    assert os.stat(done["netns_path"]).st_ino == before
    assert world.leases() == done["ips"] and len(done["ips"]) == 1
    assert world.call("teardown", {"pod_id": args["pod_id"]})["found"]
    assert (world.leases(), world.namespaces(), world.layout.records.ids()) == ([], [], [])
