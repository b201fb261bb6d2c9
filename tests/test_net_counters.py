"""net.network_usage: pod interface counters read inside real namespaces.

Each test makes its namespaces with the pool's own netns module under
tmp_path (the pod's where the pool keeps it, a peer's beside it), joins
them with a veth pair and sends UDP between sockets opened inside them, so
no traffic ever reaches the host's interfaces. The fixture unmounts every
namespace a test made and checks that none is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netfixtures import in_netns, make_ctx
from pyroute2 import IPRoute

from podvisor.proto.contract import from_wire, to_wire
from podvisor.proto.errors import Cancelled, Internal, InvalidArgument
from podvisor.proto.stats import InterfaceSample, NetworkSamples
from podvisor.workers.base import OpContext
from podvisor.workers.net import counters, netns
from podvisor.workers.net.ops import NetService

POD_IP, PEER_IP = "192.0.2.2", "192.0.2.1"  # TEST-NET-1, only inside the test's namespaces
MS_BIND = 4096
_libc = ctypes.CDLL(None, use_errno=True)

# /proc/net/dev as the kernel writes it (column padding shortened).
NET_DEV = "\n".join([
    "Inter-|   Receive                            |  Transmit",
    " face |bytes packets errs drop fifo frame compressed multicast"
    "|bytes packets errs drop fifo colls carrier compressed",
    "    lo:  6386    58 0 0 0 0 0 0   6386   58  0  0  0  0  0  0",
    "  eth0:144560918 4048 3 4 5 6 7 8 187761 1951 11 12 13 14 15 16",
    "dummy0:     0     0 0 0 0 0 0 0      0    0  0  0  0  0  0  0",
]) + "\n"


@dataclass
class Node:
    """A net pool's dirs under tmp_path, and its service as a worker builds it."""

    base: Path
    service: NetService

    @property
    def netns_dir(self) -> Path:
        return self.base / "run" / "netns"

    def pod_path(self, pod_id: str) -> str:
        return netns.path_for(str(self.netns_dir), pod_id)

    def usage(self, ids: list[Any], ctx: OpContext | None = None) -> dict[str, Any]:
        """The op as the worker runs it: the map checked against the
        contract on the way in, the result on the way out."""
        served = self.service.ops()["net.network_usage"]
        args = from_wire({"sandbox_ids": ids}, served.op.args, "net.network_usage arguments")
        result = served.fn(ctx or make_ctx(op="net.network_usage"), args)
        assert isinstance(result, NetworkSamples)
        return to_wire(result, served.op.result)

    def mounts(self) -> list[str]:
        prefix = str(self.base) + "/"
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    settings = {"root": str(tmp_path / "root"), "runroot": str(tmp_path / "run"),
                "network": {"network_dir": str(tmp_path / "net.d"),
                            "plugin_dirs": ["/usr/lib/cni"]}}
    made = Node(tmp_path, NetService.from_settings(settings))
    try:
        yield made
    finally:
        for mount in made.mounts():
            netns.remove(mount)
    assert made.mounts() == []


def poll(what: str, pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wire_pod(pod: str, peer: str) -> None:
    """eth0 (POD_IP) and an idle bridge br0 in ``pod``, veth peer0 (PEER_IP) in
    ``peer``."""
    def in_pod() -> None:
        with IPRoute() as ipr:
            ipr.link("add", ifname="eth0", kind="veth", peer="peer0")
            ipr.link("add", ifname="br0", kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname="peer0")[0], net_ns_fd=peer)
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=POD_IP, prefixlen=24)
            ipr.link("set", index=eth0, state="up")

    def in_peer() -> None:
        with IPRoute() as ipr:
            peer0 = ipr.link_lookup(ifname="peer0")[0]
            ipr.addr("add", index=peer0, address=PEER_IP, prefixlen=24)
            ipr.link("set", index=peer0, state="up")

    in_netns(pod, in_pod)
    in_netns(peer, in_peer)

    def carrier() -> bool:
        def up() -> bool:
            with IPRoute() as ipr:
                return bool(ipr.get_links(ifname="eth0")[0].get_attr("IFLA_OPERSTATE") == "UP")
        return in_netns(pod, up)

    poll("the veth pair's carrier", carrier)


def udp_socket(path: str, ip: str) -> socket.socket:
    """A UDP socket of the namespace at ``path``, bound to ``ip``."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, 0))
        sock.settimeout(10)
        return sock
    return in_netns(path, make)


def by_name(sample: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in sample["interfaces"]}


@contextlib.contextmanager
def namespace(path: str) -> Iterator[str]:
    netns.create(path)
    try:
        yield path
    finally:
        netns.remove(path)


def test_net_dev_text_is_parsed_column_by_column() -> None:
    parsed = counters.parse_net_dev(NET_DEV)
    assert [i.name for i in parsed] == ["lo", "eth0", "dummy0"]
    # A counter wide enough to touch the colon is still read.
    assert parsed[1] == InterfaceSample(
        name="eth0", rx_bytes=144560918, rx_packets=4048, rx_errors=3, rx_dropped=4,
        tx_bytes=187761, tx_packets=1951, tx_errors=11, tx_dropped=12)
    assert counters.parse_net_dev("\n".join(NET_DEV.splitlines()[:2])) == []
    with open("/proc/self/net/dev", encoding="ascii") as f:
        assert "lo" in {i.name for i in counters.parse_net_dev(f.read())}


@pytest.mark.parametrize("line", [
    "  eth0 144560918 4048 0 0 0 0 0 0 187761 1951 0 0 0 0 0 0",
    "  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15",
    "  eth0: 1 2 3 x 5 6 7 8 9 10 11 12 13 14 15 16",
    "      : 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
])
def test_a_line_not_in_the_kernel_format_is_refused(line: str) -> None:
    text = "\n".join([*NET_DEV.splitlines()[:2], line])
    with pytest.raises(counters.Unparsable, match=r"/proc/net/dev .*line"):
        counters.parse_net_dev(text)


def test_counters_rise_with_traffic_inside_the_pod_namespace(node: Node) -> None:
    pod = node.pod_path("pod-a")
    with namespace(pod), namespace(str(node.base / "peer")) as peer:
        wire_pod(pod, peer)
        before = node.usage(["pod-a"])["pods"]["pod-a"]
        # Only the pod's own interfaces: not the loopback, not the peer's
        # veth end, not the host's (which has its own eth0).
        assert sorted(by_name(before)) == ["br0", "eth0"]

        pod_sock, peer_sock = udp_socket(pod, POD_IP), udp_socket(peer, PEER_IP)
        payload, rounds = os.urandom(1000), 5
        with pod_sock, peer_sock:
            for _ in range(rounds):
                pod_sock.sendto(payload, peer_sock.getsockname())
                assert peer_sock.recvfrom(2048)[0] == payload
                peer_sock.sendto(payload, pod_sock.getsockname())
                assert pod_sock.recvfrom(2048)[0] == payload

        start = time.time_ns()
        after = node.usage(["pod-a"])["pods"]["pod-a"]
        assert start <= after["timestamp_ns"] <= time.time_ns()
        old, new = by_name(before)["eth0"], by_name(after)["eth0"]
        for way in ("rx", "tx"):
            assert new[f"{way}_bytes"] - old[f"{way}_bytes"] >= rounds * len(payload)
            assert new[f"{way}_packets"] - old[f"{way}_packets"] >= rounds
            assert new[f"{way}_errors"] == old[f"{way}_errors"] == 0
        assert by_name(after)["br0"]["rx_packets"] == 0


def test_pods_without_a_mounted_namespace_are_left_out(node: Node) -> None:
    with namespace(node.pod_path("pod-a")):
        # A torn-down pod, and a leftover of a creation that died before its mount.
        with namespace(node.pod_path("pod-gone")):
            pass
        Path(node.pod_path("pod-leftover")).touch()
        ids = ["pod-a", "pod-gone", "pod-leftover", "host-net-pod", "pod-a"]
        assert sorted(node.usage(ids)["pods"]) == ["pod-a"]
        os.unlink(node.pod_path("pod-leftover"))
    assert node.usage(["pod-a"]) == {"pods": {}}
    assert node.usage([]) == {"pods": {}}


def test_reading_leaves_the_callers_namespace_and_threads_alone(node: Node) -> None:
    own = os.stat("/proc/thread-self/ns/net").st_ino
    threads = set(threading.enumerate())
    with namespace(node.pod_path("pod-a")), namespace(node.pod_path("pod-b")):
        assert sorted(node.usage(["pod-a", "pod-b"])["pods"]) == ["pod-a", "pod-b"]
    assert os.stat("/proc/thread-self/ns/net").st_ino == own
    assert set(threading.enumerate()) == threads


@pytest.mark.parametrize("bad", ["../pod-a", ".pod", "-pod", "", "x" * 129, "pod a"])
def test_a_bad_sandbox_id_is_invalid_argument(node: Node, bad: str) -> None:
    with pytest.raises(InvalidArgument, match="sandbox_ids"):
        node.usage(["pod-a", bad])


def test_a_wrongly_typed_query_is_invalid_argument(node: Node) -> None:
    with pytest.raises(InvalidArgument, match="sandbox_ids"):
        node.usage([1])


def test_a_namespace_that_cannot_be_entered_is_internal_naming_the_pod(node: Node) -> None:
    # An nsfs mount of another kind passes the mount check; setns refuses it.
    path = node.pod_path("pod-odd")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).touch()
    try:
        if _libc.mount(b"/proc/thread-self/ns/uts", os.fsencode(path), b"none",
                       MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), "bind mount of a uts namespace")
        with pytest.raises(Internal, match="pod-odd"):
            node.usage(["pod-odd"])
    finally:
        netns.remove(path)


def test_a_cancelled_caller_stops_the_batch(node: Node) -> None:
    ctx = make_ctx(op="net.network_usage")
    ctx.cancelled.set()
    with namespace(node.pod_path("pod-a")), pytest.raises(Cancelled):
        node.usage(["pod-a"], ctx)
