"""Does a mass drain slow everything else? Status, ContainerStatus and
ExecSync latency while N containers wait out a StopContainer grace period,
against the same calls on the same node before the drain, in one run.

One daemon from the checkout (test registry, private CNI world, default
pool sizes), pods of ten busybox containers that ignore SIGTERM, plus one
idle container to probe. R rounds of each call idle; then StopContainer
with a G s grace period for every stubborn container at once, R rounds of
each call while all of them wait, and the drain ends with SIGKILL.
Everything is removed at the end.

    .venv/bin/python bench/drain.py [--containers 100] [--grace 30] [--rounds 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchlib import percentiles, timed
from podfixtures import Node, node

from podvisor.proto import api_pb2 as api

STUBBORN = "trap '' TERM; sleep 86400 & wait; sleep 86400"
IDLE = "trap 'exit 0' TERM; sleep 86400 & wait"
PER_POD = 10


def calls(n: Node, probe: str) -> dict[str, Callable[[], object]]:
    runtime = n.daemon.runtime
    return {
        "Status": lambda: runtime.Status(api.StatusRequest(), timeout=60),
        "ContainerStatus": lambda: n.status(probe),
        "ExecSync": lambda: n.exec(probe, "true", timeout=30),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--grace", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with node() as n:
        stubborn: list[str] = []
        probe = ""
        for index in range((args.containers + PER_POD - 1) // PER_POD):
            config = n.pod_config(f"drain-{index}")
            pod_id = n.run_pod(config)
            count = min(PER_POD, args.containers - len(stubborn))
            stubborn += [n.run(pod_id, config, n.container_config(f"s-{i}", STUBBORN))
                         for i in range(count)]
            if not probe:
                probe = n.run(pod_id, config, n.container_config("probe", IDLE))
        for cid in [*stubborn, probe]:
            n.wait_state(cid, api.CONTAINER_RUNNING)
        idle = {name: timed(call, args.rounds) for name, call in calls(n, probe).items()}
        runtime = n.daemon.runtime
        with ThreadPoolExecutor(len(stubborn)) as pool:
            started = time.monotonic()
            stops = [pool.submit(runtime.StopContainer, api.StopContainerRequest(
                container_id=cid, timeout=args.grace), timeout=args.grace + 120)
                for cid in stubborn]
            time.sleep(1)  # every stop has sent its SIGTERM
            busy = {name: timed(call, args.rounds) for name, call in calls(n, probe).items()}
            waited = time.monotonic() - started
            for future in stops:
                future.result()
            pending_during = waited < args.grace
    print(f"{args.containers} containers in a {args.grace} s grace period "
          f"(measured {'inside' if pending_during else 'PAST'} it)")
    print(f"{'call':>16} | {'idle p50 / p95':>18} | {'during the drain p50 / p95':>28} | ratio p50")
    for name in idle:
        a, b = percentiles(idle[name]), percentiles(busy[name])
        print(f"{name:>16} | {a[0]:>7.1f} / {a[1]:>6.1f} ms | {b[0]:>15.1f} / {b[1]:>6.1f} ms"
              f" | {b[0] / a[0]:>9.2f}")


if __name__ == "__main__":
    main()
