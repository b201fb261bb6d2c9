"""What a container's monitor costs in memory: exec'd monitors against
monitors forked by the monitor zygote, in one run.

For each mode (``[podvisor.runtime] monitor_zygote = false``, then true),
one daemon from the checkout (test registry, private CNI world): a warm-up
pod run and removed (the first monitor after a worker starts is exec'd
while the zygote starts), then N pods of one idle busybox container each,
as ``mem-pods.sh`` makes them (PID namespace shared by the pod, so each pod
also has an infra process with a monitor of its own). Once every container
runs and SETTLE seconds have passed, from /proc/<pid>/smaps_rollup:

- PSS and private dirty memory of every monitor (the pids in the state
  dirs' conmon.pid), median and max;
- the zygote's PSS, and monitors plus zygote divided by the monitors: what
  each monitor costs with the zygote's share counted in;
- how many monitors were forked by the zygote: a forked monitor writes its
  title over the zygote's argv area, so its /proc/<pid>/cmdline has that
  area's size (conmon/proctitle.py).

Everything is removed at the end.

    .venv/bin/python bench/monitor_mem.py [--pods 10] [--settle 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from podfixtures import Node, node

from podvisor.proto import api_pb2 as api

IDLE = "sleep 3600"
ZYGOTE_TITLE = b"podvisor-conmon-zygote "


@dataclass(frozen=True)
class Row:
    mode: str
    monitors: int
    forked: int
    pss: list[int]  # kB, one per monitor
    private: list[int]
    zygote_pss: int


def rollup(pid: int) -> dict[str, int]:
    """smaps_rollup's kB figures of ``pid``."""
    figures = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                figures[parts[0].rstrip(":")] = int(parts[1])
    return figures


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def monitor_pids(n: Node) -> list[int]:
    return [int(p.read_text()) for p in (n.daemon.runroot / "c").glob("*/conmon.pid")]


def zygote_pid(n: Node) -> int | None:
    title = ZYGOTE_TITLE + str(n.daemon.runroot / "runtime").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if cmdline(int(entry.name)).rstrip(b"\0") == title:
                    return int(entry.name)
            except OSError:
                continue
    return None


def add_pod(n: Node, index: int) -> str:
    config = n.pod_config(f"mem-{index}")
    pod_id = n.run_pod(config)
    n.wait_state(n.run(pod_id, config, n.container_config("sleeper", IDLE)),
                 api.CONTAINER_RUNNING)
    return pod_id


def measure(mode: str, zygote: bool, pods: int, settle: float) -> Row:
    with node(config=f"[podvisor.runtime]\nmonitor_zygote = {str(zygote).lower()}\n") as n:
        n.remove_pod(add_pod(n, -1))
        for index in range(pods):
            add_pod(n, index)
        time.sleep(settle)  # let start-up pages settle, as mem-pods.sh does
        pids = monitor_pids(n)
        zpid = zygote_pid(n)
        room = len(cmdline(zpid)) if zpid else -1
        figures = [rollup(pid) for pid in pids]
        return Row(mode, len(pids), sum(len(cmdline(pid)) == room for pid in pids),
                   [f["Pss"] for f in figures],
                   [f["Private_Dirty"] + f["Private_Clean"] for f in figures],
                   rollup(zpid)["Pss"] if zpid else 0)


def mib(kb: float) -> str:
    return f"{kb / 1024:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()
    rows = [measure("exec'd (monitor_zygote = false)", False, args.pods, args.settle),
            measure("forked by the zygote (default)", True, args.pods, args.settle)]
    print(f"{args.pods} pods, one container each: {rows[0].monitors} monitors "
          "(infra and container). MiB.\n")
    print("| monitors | forked | PSS each, median | max | private each, median "
          "| zygote PSS | (monitors + zygote) / monitors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        per = (sum(row.pss) + row.zygote_pss) / max(1, row.monitors)
        print(f"| {row.mode} | {row.forked}/{row.monitors} | {mib(statistics.median(row.pss))} "
              f"| {mib(max(row.pss))} | {mib(statistics.median(row.private))} "
              f"| {mib(row.zygote_pss)} | {mib(per)} |")


if __name__ == "__main__":
    main()
