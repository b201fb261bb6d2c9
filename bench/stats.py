"""What stats cost: ListContainerStats and ListPodSandboxStats latency with
10, 50 and 100 containers running, against reading the same cgroup files
in a bare loop, in the same run.

One daemon from the checkout (test registry, private CNI world), pods of
ten idle busybox containers each, added in steps; at each step, after one
warm-up call:

- ``ListContainerStats`` (no filter) and ``ListPodSandboxStats`` through
  the CRI socket, R rounds each, interleaved;
- the floor: ``usage.read`` (the cgroup reader the runtime pool uses) of
  every running container's cgroup, in this process, R rounds;
- the CPU the daemon's processes (supervisor and workers) spent per
  ListContainerStats call, from /proc/<pid>/stat over the rounds.

Everything is removed at the end.

    .venv/bin/python bench/stats.py [--rounds 30] [--steps 10,50,100]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchlib import percentiles, timed
from podfixtures import Node, node

from podvisor.proto import api_pb2 as api
from podvisor.workers.runtime.cgroup import hierarchy, usage
from podvisor.workers.runtime.cgroup.driver import Driver

IDLE = "trap 'exit 0' TERM; sleep 86400 & wait"
PER_POD = 10
TICK = os.sysconf("SC_CLK_TCK")


def add_pod(n: Node, index: int) -> list[tuple[str, str]]:
    """A pod of PER_POD running containers: (cgroup parent, container id) each."""
    config = n.pod_config(f"stats-{index}")
    pod_id = n.run_pod(config)
    made = []
    for i in range(PER_POD):
        cid = n.run(pod_id, config, n.container_config(f"idle-{i}", IDLE))
        made.append((config.linux.cgroup_parent, cid))
    for _parent, cid in made:
        n.wait_state(cid, api.CONTAINER_RUNNING)
    return made


def daemon_pids(n: Node) -> list[int]:
    workers = n.daemon.workers()
    return [n.daemon.pid, *(int(w["pid"]) for w in workers.values() if w.get("pid"))]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


Row = tuple[int, tuple[float, float], tuple[float, float], tuple[float, float], float]


def measure(n: Node, driver: Driver, containers: list[tuple[str, str]], rounds: int) -> Row:
    runtime = n.daemon.runtime
    paths = [driver.object_path(parent, cid) for parent, cid in containers]

    def list_containers() -> None:
        stats = runtime.ListContainerStats(api.ListContainerStatsRequest(), timeout=60).stats
        assert len(stats) == len(containers), len(stats)

    def list_pods() -> None:
        runtime.ListPodSandboxStats(api.ListPodSandboxStatsRequest(), timeout=60)

    def bare() -> None:
        for path in paths:
            usage.read(driver.hierarchy, path)

    for call in (list_containers, list_pods, bare):
        call()  # warm-up
    pids = daemon_pids(n)
    cpu_before = cpu_seconds(pids)
    cri = timed(list_containers, rounds)
    cpu_per_call = (cpu_seconds(pids) - cpu_before) / rounds
    pods = timed(list_pods, rounds)
    floor = timed(bare, rounds)
    return (len(containers), percentiles(cri), percentiles(pods), percentiles(floor),
            cpu_per_call * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", default="10,50,100")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    driver = Driver("cgroupfs", hierarchy.host())
    rows = []
    with node() as n:
        containers: list[tuple[str, str]] = []
        for step in steps:
            while len(containers) < step:
                containers += add_pod(n, len(containers) // PER_POD)
            rows.append(measure(n, driver, containers, args.rounds))
    print(f"{'containers':>10} | {'ListContainerStats p50/p95':>26} | "
          f"{'ListPodSandboxStats p50/p95':>27} | {'bare cgroup reads p50/p95':>25} | "
          f"{'ratio p50':>9} | {'daemon CPU/call':>15}")
    for step, cri, pods, floor, cpu in rows:
        print(f"{step:>10} | {cri[0]:>11.1f} / {cri[1]:>6.1f} ms | "
              f"{pods[0]:>12.1f} / {pods[1]:>6.1f} ms | {floor[0]:>10.1f} / {floor[1]:>6.1f} ms"
              f" | {cri[0] / floor[0]:>9.1f} | {cpu:>12.1f} ms")


if __name__ == "__main__":
    main()
