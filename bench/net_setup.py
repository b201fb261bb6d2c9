"""What podvisor's net code costs over the CNI plugins themselves.

Sets up and tears down ``--pods`` pod networks (default 50), all at once
unless ``--parallel`` says otherwise, two ways in the same run, on the same bridge + host-local +
portmap + loopback conflist:

- podvisor: ``net.setup`` / ``net.teardown`` op functions called from a
  thread pool with a real OpContext, exactly as a net worker's threads call
  them (pod lock, records fsync'd, pyroute2 namespace, CNI chain);
- shell: a bash loop under ``xargs -P`` that does the same work with the
  same binaries by hand: ``unshare --net=<file>`` for the namespace,
  ``ip link set lo up``, then each plugin with CNI_* set and its config on
  stdin, the previous result spliced in as prevResult; DEL in reverse.

Rounds alternate between the two; the medians and the podvisor/shell ratio
are printed. Run as root on a host with /usr/lib/cni:

    /tmp/pv/bin/python bench/net_setup.py [--pods 50] [--parallel 50] [--rounds 3]

The private world (bridge, 10.x/24, dirs) and the restoration of iptables
and sysctls afterwards come from tests/netfixtures.py, shared with the
tests so that the bench leaves the host exactly as clean as they do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netfixtures import CniWorld, private_cni_world

from podvisor.workers.net import cni, cniconf, ops

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


def podvisor_round(world: CniWorld, pods: int, parallel: int, tag: str) -> tuple[float, float]:
    ids = [f"pv{tag}{i:03d}" for i in range(pods)]

    def up(pod_id: str) -> Any:
        return ops.setup(world.ctx(), {"pod_id": pod_id, "name": pod_id,
                                       "namespace": "bench", "uid": pod_id})

    def down(pod_id: str) -> Any:
        return ops.teardown(world.ctx(), {"pod_id": pod_id})

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
                 "mounts": world.mounts()}
    if any(leftovers.values()):
        raise SystemExit(f"a round leaked: {leftovers}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=0,
                        help="pods in flight at once (default: all of them)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.parallel = args.parallel or args.pods
    if os.geteuid() != 0:
        raise SystemExit("run as root: namespaces, veths and iptables need it")

    results: dict[str, list[tuple[float, float]]] = {"podvisor": [], "shell": []}
    with tempfile.TemporaryDirectory(prefix="pv-netbench-") as tmp, \
            private_cni_world(Path(tmp)) as world:
        conflist = world.write_conflist()
        nsdir = Path(tmp) / "shell-netns"
        nsdir.mkdir()
        script = Path(tmp) / "pod.sh"
        script.write_text(SHELL_POD)
        env = shell_env(world, conflist, nsdir)
        # Warm-up: the bridge exists, binaries and VERSION answers are cached.
        podvisor_round(world, 2, 2, "w")
        shell_round(world, 2, 2, "w", script, env)
        for r in range(args.rounds):
            order = ("shell", "podvisor") if r % 2 == 0 else ("podvisor", "shell")
            for side in order:
                if side == "shell":
                    results[side].append(shell_round(world, args.pods, args.parallel,
                                                     str(r), script, env))
                else:
                    results[side].append(podvisor_round(world, args.pods, args.parallel,
                                                        str(r)))

    med = {side: (statistics.median(s for s, _ in rounds),
                  statistics.median(t for _, t in rounds),
                  statistics.median(s + t for s, t in rounds))
           for side, rounds in results.items()}
    print(f"{args.pods} pod networks, {args.parallel} in parallel, "
          f"median of {args.rounds} rounds (seconds)")
    print(f"{'':10} {'setup':>8} {'teardown':>9} {'total':>8}")
    for side in ("shell", "podvisor"):
        s, t, total = med[side]
        print(f"{side:10} {s:8.3f} {t:9.3f} {total:8.3f}")
    ratios = [med["podvisor"][i] / med["shell"][i] for i in range(3)]
    print(f"{'ratio':10} {ratios[0]:8.2f} {ratios[1]:9.2f} {ratios[2]:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
