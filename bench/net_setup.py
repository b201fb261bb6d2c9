"""What podvisor's net pool costs over the CNI plugins themselves.

Sets up and tears down ``--pods`` pod networks (default 50), all at once
unless ``--parallel`` says otherwise, three ways in the same run, on the same
bridge + host-local + portmap + loopback conflist:

- bus: through podvisor as the daemon runs it: ``--workers`` real
  ``python -m podvisor.workers.net`` processes (default 2, the daemon's)
  spawned by a WorkerPool, watched by Supervision, reached through a PoolBus
  (tests/test_net_kill.py builds the same pool); ``net.setup`` /
  ``net.teardown`` go over ZeroMQ with ``--parallel`` calls outstanding. A
  worker serves ``--max-inflight`` at once (default 16, the daemon's), so
  with the defaults 32 run and the rest wait on the bus, as in the daemon;
- in-process: the same op functions called from a thread pool with a real
  OpContext, as a worker's threads call them (pod lock, records fsync'd,
  pyroute2 namespace, CNI chain); bus minus in-process is the bus's share;
- shell: a bash loop under ``xargs -P`` that does the same work with the
  same binaries by hand: ``unshare --net=<file>`` for the namespace,
  ``ip link set lo up``, then each plugin with CNI_* set and its config on
  stdin, the previous result spliced in as prevResult; DEL in reverse.

Each bus round starts its own pool, warms every worker up, times, then stops
the workers by pid, so no worker (and no supervision ``waitpid(-1)``, which
would steal the exit statuses of the other rounds' children) outlives it.
Workers log at the daemon's level into a file, as the daemon's go to its
log; its tail is printed if the bench fails. Rounds rotate the order of the
three sides; medians and the ratios to the shell are printed. Run as root
on a host with /usr/lib/cni:

    /tmp/pv/bin/python bench/net_setup.py [--pods 50] [--parallel 50] [--rounds 3]

The private world (bridge, 10.x/24, dirs) and the restoration of iptables
and sysctls afterwards come from tests/netfixtures.py, shared with the
tests so that the bench leaves the host exactly as clean as they do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netfixtures import CniWorld, private_cni_world

from podvisor.supervisor import config as cfg
from podvisor.supervisor.bus import BusTiming, PoolBus
from podvisor.supervisor.daemon import worker_settings
from podvisor.supervisor.pool import RestartPolicy, WorkerCommand, WorkerPool, write_settings
from podvisor.supervisor.supervision import Supervision
from podvisor.workers.net import cni, cniconf

DEADLINE = 120.0       # per bus call; a round of 50 takes about a second
READY_TIMEOUT = 20.0   # the pool's own start_timeout is 15 s
SIDES = ("shell", "bus", "in-process")

SHELL_POD = r"""
set -euo pipefail
cmd=$1 id=$2
ns="$NSDIR/$id"
plugin() {  # plugin <type> <command> <config>
    CNI_COMMAND=$2 CNI_CONTAINERID=$id CNI_NETNS=$ns CNI_IFNAME=eth0 \
        CNI_PATH=$CNI_BIN "$CNI_BIN/$1" <<<"$3"
}
with_prev() { printf '%s' "${1%\}},\"prevResult\":$2}"; }
if [ "$cmd" = up ]; then
    touch "$ns"
    unshare --net="$ns" true
    nsenter --net="$ns" ip link set lo up
    res=$(plugin bridge ADD "$BRIDGE_CONF")
    res=$(plugin portmap ADD "$(with_prev "$PORTMAP_CONF" "$res")")
    res=$(plugin loopback ADD "$(with_prev "$LOOPBACK_CONF" "$res")")
    printf '%s' "$res" >"$NSDIR/$id.result"
else
    res=$(cat "$NSDIR/$id.result")
    plugin loopback DEL "$(with_prev "$LOOPBACK_CONF" "$res")" >/dev/null
    plugin portmap DEL "$(with_prev "$PORTMAP_CONF" "$res")" >/dev/null
    plugin bridge DEL "$(with_prev "$BRIDGE_CONF" "$res")" >/dev/null
    umount "$ns"
    rm -f "$ns" "$NSDIR/$id.result"
fi
"""


def setup_args(pod_id: str) -> dict[str, Any]:
    return {"pod_id": pod_id, "name": pod_id, "namespace": "bench", "uid": pod_id,
            "port_mappings": [], "host_network": False, "cgroup_parent": ""}


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Children spawned inside inherit ``path`` as their stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class NetPool:
    """A net pool of real worker processes behind a real bus, as the daemon
    builds it (daemon.Daemon._build_pools), for one bus round."""

    def __init__(self, world: CniWorld, workers: int, max_inflight: int,
                 log_path: Path) -> None:
        run = world.base / "run"
        (run / "bus").mkdir(parents=True, exist_ok=True)
        settings_path = str(run / "worker-settings.json")
        config = cfg.from_dict({"root": world.settings["root"], "runroot": str(run),
                                "network": world.settings["network"],
                                "workers": {"net": workers, "max_inflight": max_inflight}})
        write_settings(settings_path, worker_settings(config))
        w = config.workers
        policy = RestartPolicy(backoff_base=w.backoff_base, backoff_cap=w.backoff_cap,
                               startsecs=w.startsecs, fatal_after=w.fatal_after,
                               start_timeout=w.start_timeout)
        timing = BusTiming(heartbeat_interval=w.heartbeat_interval,
                           heartbeat_liveness=w.heartbeat_liveness,
                           overrun_grace=w.overrun_grace)
        endpoint = f"ipc://{run}/bus/net.sock"
        command = WorkerCommand(lambda _: endpoint, settings_path)
        # Every process ever spawned, respawns included, so that stop() can
        # make sure of each one by its pid.
        self.started: list[subprocess.Popen[bytes]] = []

        def spawn(pool: str, index: int) -> subprocess.Popen[bytes]:
            process = command(pool, index)
            self.started.append(process)
            return process

        self.pool = WorkerPool("net", w.net, spawn, policy, lambda *_: None)
        self.bus = PoolBus("net", endpoint, timing, admit=self.pool.mark_ready,
                           on_unresponsive=self.pool.kill_unresponsive,
                           is_fatal=self.pool.is_fatal)
        self.supervision = Supervision({"net": self.pool}, {"net": self.bus})
        self.stop_timeout = w.stop_timeout
        self.log_path = log_path
        self.zctx = zmq.asyncio.Context()

    async def start(self) -> None:
        self.bus.bind(self.zctx)
        self.bus.start()
        # Spawns happen here, from the main thread (PR_SET_PDEATHSIG).
        with stderr_to(self.log_path):
            self.supervision.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while self.pool.ready_count() < len(self.pool.slots):
            if time.monotonic() > deadline:
                raise RuntimeError(f"net workers not READY within {READY_TIMEOUT:.0f}s: "
                                   f"{[s.state.name for s in self.pool.slots]}")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        try:
            await self.supervision.stop(self.stop_timeout)
            await self.bus.stop()
            self.zctx.destroy(linger=0)
        finally:
            # Supervision reaps what it stopped; anything it missed (it
            # failed, or we were interrupted) is killed here by its pid.
            for process in self.started:
                if process.returncode is None and process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGKILL)
                    process.wait()

    async def fan_out(self, op: str, args: list[dict[str, Any]], parallel: int) -> float:
        """Seconds for every call of ``op``, ``parallel`` outstanding at a time."""
        gate = asyncio.Semaphore(parallel)

        async def one(a: dict[str, Any]) -> Any:
            async with gate:
                return await self.bus.call(op, a, deadline=time.monotonic() + DEADLINE)

        started = time.perf_counter()
        await asyncio.gather(*(one(a) for a in args))
        return time.perf_counter() - started


async def bus_session(world: CniWorld, pods: int, parallel: int, tag: str, workers: int,
                      max_inflight: int, log_path: Path) -> tuple[float, float]:
    net = NetPool(world, workers, max_inflight, log_path)
    try:
        await net.start()
        # Warm-up: two pods a worker (the bus sends each call to the least
        # busy one), so every worker has loaded the config and asked each
        # plugin for its VERSION before the clock runs.
        warm = [setup_args(f"bw{tag}{i:03d}") for i in range(2 * workers)]
        await net.fan_out("net.setup", warm, len(warm))
        await net.fan_out("net.teardown", [{"pod_id": a["pod_id"]} for a in warm], len(warm))
        ids = [f"bus{tag}{i:03d}" for i in range(pods)]
        setup = await net.fan_out("net.setup", [setup_args(p) for p in ids], parallel)
        teardown = await net.fan_out("net.teardown", [{"pod_id": p} for p in ids], parallel)
    finally:
        await net.stop()
    return setup, teardown


def bus_round(world: CniWorld, pods: int, parallel: int, tag: str, workers: int,
              max_inflight: int, log_path: Path) -> tuple[float, float]:
    times = asyncio.run(bus_session(world, pods, parallel, tag, workers, max_inflight,
                                    log_path))
    check_clean(world)
    return times


def inprocess_round(world: CniWorld, pods: int, parallel: int, tag: str) -> tuple[float, float]:
    ids = [f"pv{tag}{i:03d}" for i in range(pods)]

    def up(pod_id: str) -> Any:
        return world.call("setup", setup_args(pod_id))

    def down(pod_id: str) -> Any:
        return world.call("teardown", {"pod_id": pod_id})

    with ThreadPoolExecutor(parallel) as pool:
        started = time.perf_counter()
        list(pool.map(up, ids))
        setup = time.perf_counter() - started
        started = time.perf_counter()
        list(pool.map(down, ids))
        teardown = time.perf_counter() - started
    check_clean(world)
    return setup, teardown


def shell_round(world: CniWorld, pods: int, parallel: int, tag: str,
                script: Path, env: dict[str, str]) -> tuple[float, float]:
    ids = "\n".join(f"sh{tag}{i:03d}" for i in range(pods)) + "\n"

    def run(command: str) -> float:
        started = time.perf_counter()
        subprocess.run(["xargs", "-P", str(parallel), "-I{}", "bash", str(script), command,
                        "{}"], input=ids, text=True, env=env, check=True)
        return time.perf_counter() - started

    setup = run("up")
    teardown = run("down")
    check_clean(world)
    return setup, teardown


def shell_env(world: CniWorld, conflist: Path, nsdir: Path) -> dict[str, str]:
    """Each plugin's stdin as libcni builds it: entry + name + cniVersion."""
    net = cniconf.parse(str(conflist))
    confs = {p["type"]: json.dumps(cni.plugin_config(net, i, None, {}))
             for i, p in enumerate(net.plugins)}
    return {**os.environ, "NSDIR": str(nsdir), "CNI_BIN": world.settings["network"][
        "plugin_dirs"][0], "BRIDGE_CONF": confs["bridge"], "PORTMAP_CONF": confs["portmap"],
        "LOOPBACK_CONF": confs["loopback"]}


def check_clean(world: CniWorld) -> None:
    leftovers = {"leases": world.leases(), "veths": world.bridge_ports(),
                 "mounts": world.mounts(), "records": world.layout.records.ids()}
    if any(leftovers.values()):
        raise SystemExit(f"a round leaked: {leftovers}")


def print_log_tail(path: Path, lines: int = 40) -> None:
    if path.exists():
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last lines of the net workers' log ({path}):", *tail, sep="\n",
              file=sys.stderr)


def main() -> int:
    defaults = cfg.WorkersConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=0,
                        help="pods in flight at once (default: all of them)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=defaults.net,
                        help=f"net worker processes (default {defaults.net}, the daemon's)")
    parser.add_argument("--max-inflight", type=int, default=defaults.max_inflight,
                        help="requests one worker serves at once "
                             f"(default {defaults.max_inflight}, the daemon's)")
    args = parser.parse_args()
    args.parallel = args.parallel or args.pods
    if os.geteuid() != 0:
        raise SystemExit("run as root: namespaces, veths and iptables need it")

    results: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="pv-netbench-") as tmp, \
            private_cni_world(Path(tmp)) as world:
        conflist = world.write_conflist()
        nsdir = Path(tmp) / "shell-netns"
        nsdir.mkdir()
        script = Path(tmp) / "pod.sh"
        script.write_text(SHELL_POD)
        env = shell_env(world, conflist, nsdir)
        log_path = Path(tmp) / "net-workers.log"
        rounds: dict[str, Callable[[str], tuple[float, float]]] = {
            "shell": lambda tag: shell_round(world, args.pods, args.parallel, tag, script,
                                             env),
            "bus": lambda tag: bus_round(world, args.pods, args.parallel, tag, args.workers,
                                         args.max_inflight, log_path),
            "in-process": lambda tag: inprocess_round(world, args.pods, args.parallel, tag),
        }
        try:
            # Warm-up: the bridge exists, binaries and VERSION answers are
            # cached (bus rounds warm their own workers up).
            inprocess_round(world, 2, 2, "w")
            shell_round(world, 2, 2, "w", script, env)
            for r in range(args.rounds):
                # Rotate the order so no side always runs first or last.
                for side in SIDES[r % 3:] + SIDES[:r % 3]:
                    results[side].append(rounds[side](str(r)))
        except (Exception, SystemExit):  # SystemExit: a round leaked
            print_log_tail(log_path)
            raise

    med = {side: (statistics.median(s for s, _ in rs), statistics.median(t for _, t in rs),
                  statistics.median(s + t for s, t in rs))
           for side, rs in results.items()}
    at_once = min(args.parallel, args.workers * args.max_inflight)
    print(f"{args.pods} pod networks, {args.parallel} in parallel, "
          f"median of {args.rounds} rounds (seconds)")
    print(f"bus: {args.workers} net workers x {args.max_inflight} requests each, "
          f"{at_once} served at once")
    print(f"{'':18} {'setup':>8} {'teardown':>9} {'total':>8}")
    for side in SIDES:
        s, t, total = med[side]
        print(f"{side:18} {s:8.3f} {t:9.3f} {total:8.3f}")
    for side in ("bus", "in-process"):
        ratios = [med[side][i] / med["shell"][i] for i in range(3)]
        print(f"{side + '/shell':18} {ratios[0]:8.2f} {ratios[1]:9.2f} {ratios[2]:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
