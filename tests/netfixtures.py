"""A private CNI world per net test, and a guard that puts the host back.

``CniWorld`` gives a test its own network_dir, root and run dirs, host-local
data dir, bridge name and 10.x/24 (checked against the host's routes), and
writes conflists using the real Debian plugins from /usr/lib/cni. Traffic
only ever goes to namespaces the test created and to 127.0.0.1. Its
``call`` runs an op with the map the bus carries, checked against the op's
contract as the worker checks it.

``HostGuard`` snapshots what the plugins touch on the host (iptables and
ip6tables rules and chains, nft tables, the forwarding and route_localnet
sysctls) and restores exactly that afterwards, deleting only what appeared
during the test. Teardown order: tear down every pod podvisor still knows
(DEL first, as reconcile does), force-unmount any namespace left in the
test's run dir, delete the bridge, then restore the guard, so a failing
test leaves the host as it found it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import random
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute

from podvisor.proto.contract import from_wire, to_wire
from podvisor.workers.base import OpContext
from podvisor.workers.net import netns, podnet
from podvisor.workers.net.ops import NetService

T = TypeVar("T")

PLUGIN_DIRS = ["/usr/lib/cni"]
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
           "net/ipv4/conf/all/route_localnet")


def make_ctx(timeout: float = 60.0, op: str = "net.setup") -> OpContext:
    return OpContext(request_id=os.urandom(8), op=op, deadline=time.monotonic() + timeout)


def _host_routes() -> list[ipaddress.IPv4Network]:
    nets = []
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=2):
            dst = route.get_attr("RTA_DST")
            if dst and route["dst_len"]:
                nets.append(ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False))
    return nets


def free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that no host route overlaps."""
    used = _host_routes()
    rng = random.Random()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randint(200, 254)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.x.y.0/24 on this host")


@dataclass
class CniWorld:
    base: Path
    bridge: str
    subnet: ipaddress.IPv4Network
    net_name: str = "pvtest"
    settings: dict[str, Any] = field(init=False)
    net: NetService = field(init=False)

    def __post_init__(self) -> None:
        self.network_dir.mkdir(parents=True, exist_ok=True)
        self.settings = {
            "root": str(self.base / "root"), "runroot": str(self.base / "run"),
            "network": {"network_dir": str(self.network_dir), "plugin_dirs": PLUGIN_DIRS},
        }
        self.net = self.service()

    @property
    def network_dir(self) -> Path:
        return self.base / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.base / "ipam"

    @property
    def netns_dir(self) -> Path:
        return self.base / "run" / "netns"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def layout(self) -> podnet.Layout:
        return self.net.layout

    def service(self, **network: Any) -> NetService:
        """The net pool's service as a worker builds it from the world's
        settings; keyword args override keys of ``settings["network"]``."""
        settings = {**self.settings, "network": {**self.settings["network"], **network}}
        return NetService.from_settings(settings)

    def ctx(self, timeout: float = 60.0, op: str = "net.setup") -> OpContext:
        return make_ctx(timeout, op)

    def call(self, op: str, args: dict[str, Any], service: NetService | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        """``net.<op>`` as a worker runs it on ``service`` (the world's by
        default): the map rebuilt as the op's arguments (InvalidArgument
        naming a wrong field), the result checked and turned back into a map."""
        served = (service or self.net).ops()[f"net.{op}"]
        typed = from_wire(args, served.op.args, f"net.{op} arguments")
        result = served.fn(self.ctx(timeout, f"net.{op}"), typed)
        return to_wire(result, served.op.result)

    def bridge_plugin(self, ranges: list[list[dict[str, str]]] | None = None) -> dict[str, Any]:
        return {
            "type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "dataDir": str(self.ipam_dir),
                     "ranges": ranges or [[{"subnet": str(self.subnet)}]]},
        }

    def standard_plugins(self) -> list[dict[str, Any]]:
        """bridge + host-local, portmap, loopback: the issue's conflist."""
        return [self.bridge_plugin(),
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"}]

    def write_conflist(self, plugins: list[dict[str, Any]] | None = None,
                       version: str = "1.0.0", filename: str = "10-pvtest.conflist",
                       extra: dict[str, Any] | None = None) -> Path:
        doc = {"cniVersion": version, "name": self.net_name,
               "plugins": plugins if plugins is not None else self.standard_plugins(),
               **(extra or {})}
        path = self.network_dir / filename
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.rename(path)  # a watcher never sees half a file
        return path

    def leases(self) -> list[str]:
        """IP lease files host-local holds for this network."""
        d = self.ipam_dir / self.net_name
        if not d.is_dir():
            return []
        out = []
        for name in os.listdir(d):
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(name)
                out.append(name)
        return sorted(out)

    def bridge_ports(self) -> list[str]:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.bridge)
            if not found:
                return []
            return sorted(link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
                          if link.get_attr("IFLA_MASTER") == found[0])

    def namespaces(self) -> list[str]:
        return netns.list_names(str(self.netns_dir))

    def mounts(self) -> list[str]:
        prefix = str(self.base)
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]

    def cleanup(self) -> None:
        """Leave nothing behind, whatever the test did (module docstring)."""
        with contextlib.suppress(Exception):
            podnet.reconcile(self.layout, set(), time.monotonic() + 60)
        for mount in self.mounts():
            netns.remove(mount)
        with IPRoute() as ipr:
            for index in ipr.link_lookup(ifname=self.bridge):
                ipr.link("del", index=index)


@dataclass
class _Snapshot:
    rules: dict[str, dict[str, list[str]]]
    chains: dict[str, set[str]]


class HostGuard:
    """Snapshot the host state CNI plugins change; restore it on exit."""

    def __init__(self) -> None:
        self.sysctls = {name: Path("/proc/sys", name).read_text() for name in SYSCTLS}
        self.tables = self._nft_tables()
        self.saved = {tool: self._dump(tool) for tool in ("iptables", "ip6tables")}

    @staticmethod
    def _nft_tables() -> set[str]:
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                             check=True).stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    @staticmethod
    def _dump(tool: str) -> _Snapshot:
        text = subprocess.run([f"{tool}-save"], capture_output=True, text=True,
                              check=True).stdout
        rules: dict[str, dict[str, list[str]]] = {}
        chains: dict[str, set[str]] = {}
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
                rules[table] = {}
                chains[table] = set()
            elif line.startswith(":"):
                chains[table].add(line[1:].split()[0])
            elif line.startswith("-A "):
                chain = line.split()[1]
                rules[table].setdefault(chain, []).append(line)
        return _Snapshot(rules, chains)

    def cni_lines(self) -> list[str]:
        """iptables/ip6tables lines naming CNI, for assertions."""
        out = []
        for tool in ("iptables-save", "ip6tables-save"):
            text = subprocess.run([tool], capture_output=True, text=True, check=True).stdout
            out += [line for line in text.splitlines() if "cni" in line.lower()]
        return out

    def restore(self) -> None:
        """Undo what appeared since the snapshot, touching only CNI's marks.

        Only rules naming CNI and chains called CNI-* are removed, and only
        nft tables that were created meanwhile and hold no rule: other tests
        on this host may own everything else.
        """
        for tool, before in self.saved.items():
            after = self._dump(tool)
            for table, by_chain in after.rules.items():
                old = before.rules.get(table, {})
                for chain, lines in by_chain.items():
                    for line in reversed(lines):
                        if "CNI" in line.upper() and line not in old.get(chain, []):
                            subprocess.run([tool, "-t", table, "-D", *shlex.split(line)[1:]],
                                           check=False, capture_output=True)
            for table, names in after.chains.items():
                new = {c for c in names - before.chains.get(table, set())
                       if c.startswith("CNI-")}
                for verb in ("-F", "-X"):  # flush all first: they jump to each other
                    for chain in new:
                        subprocess.run([tool, "-t", table, verb, chain], check=False,
                                       capture_output=True)
        for table in self._nft_tables() - self.tables:
            listing = subprocess.run(["nft", "-j", "list", "table", *table.split()[1:]],
                                     capture_output=True, text=True, check=False).stdout
            items = json.loads(listing or "{}").get("nftables", [])
            if not any("rule" in item for item in items):
                subprocess.run(["nft", "delete", *table.split()], check=False,
                               capture_output=True)
        for name, value in self.sysctls.items():
            Path("/proc/sys", name).write_text(value)


@contextlib.contextmanager
def private_cni_world(base: Path) -> Iterator[CniWorld]:
    """A CniWorld under ``base``; the host is restored on exit, pass or fail."""
    guard = HostGuard()
    world = CniWorld(base=base, bridge=f"pvt{os.urandom(4).hex()}", subnet=free_subnet())
    try:
        yield world
    finally:
        try:
            world.cleanup()
        finally:
            guard.restore()


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a throwaway thread that entered the namespace at ``path``.

    Sockets made there belong to that namespace for their whole life, so a
    test can serve a pod's port from its own process (no fork).
    """
    box: list[Any] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {path}")
            finally:
                os.close(fd)
            box.append((True, fn()))
        except BaseException as exc:
            box.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def ping(netns_path: str, ip: str, timeout: int = 5) -> subprocess.CompletedProcess[str]:
    """One ICMP echo from inside the namespace (busybox ping, waits for a reply)."""
    return subprocess.run(["nsenter", f"--net={netns_path}", "busybox", "ping", "-c", "1",
                           "-w", str(timeout), ip],
                          capture_output=True, text=True, timeout=timeout + 5, check=False)
