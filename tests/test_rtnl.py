"""The stdlib netlink reads behind hostNetwork pod IPs, and ``lo`` brought
up, checked in a network namespace the test makes and configures with
iproute2 (veth pairs kept inside it, addresses, default routes with
metrics; this kernel has no dummy links)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

NODE_IPS = ("import json; from podvisor.workers.net import nodeip; "
            "print(json.dumps(nodeip.node_ips()))")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pvrtnl-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


def add_link(ns: str, name: str) -> None:
    ip(ns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    for end in (name, f"{name}p"):
        ip(ns, "link", "set", end, "up")


def inside(ns: str, code: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                          check=True, capture_output=True, text=True).stdout


def test_no_global_address_means_no_node_ip(netns: str) -> None:
    assert json.loads(inside(netns, NODE_IPS)) == []


def test_default_route_with_the_lowest_metric_decides(netns: str) -> None:
    for link, v4, v6 in (("d1", "198.51.100.7/24", "2001:db8:1::7/64"),
                         ("d2", "203.0.113.9/24", "2001:db8:2::9/64")):
        add_link(netns, link)
        ip(netns, "addr", "add", v4, "dev", link)
        ip(netns, "-6", "addr", "add", v6, "dev", link, "nodad")
    ip(netns, "route", "add", "default", "dev", "d1", "metric", "200")
    ip(netns, "route", "add", "default", "dev", "d2", "metric", "100")
    ip(netns, "-6", "route", "add", "default", "dev", "d1", "metric", "100")
    ip(netns, "-6", "route", "add", "default", "dev", "d2", "metric", "200")
    assert json.loads(inside(netns, NODE_IPS)) == ["203.0.113.9", "2001:db8:1::7"]


def test_preferred_source_wins_over_the_interface_address(netns: str) -> None:
    add_link(netns, "d1")
    ip(netns, "addr", "add", "198.51.100.7/24", "dev", "d1")
    ip(netns, "addr", "add", "198.51.100.8/24", "dev", "d1")
    ip(netns, "route", "add", "default", "dev", "d1", "src", "198.51.100.8")
    assert json.loads(inside(netns, NODE_IPS)) == ["198.51.100.8"]


def test_link_up_raises_lo(netns: str) -> None:
    inside(netns, "from podvisor.workers.net import rtnl; rtnl.link_up('lo')")
    shown = subprocess.run(["ip", "-n", netns, "-j", "link", "show", "lo"], check=True,
                           capture_output=True, text=True).stdout
    assert "UP" in json.loads(shown)[0]["flags"]
