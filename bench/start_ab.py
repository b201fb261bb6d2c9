"""Pod start, before and after: two podvisor checkouts measured side by side.

A shared 2-core machine swings by a factor of two from minute to minute, so
two runs one after the other compare the load more than the code. Here both
daemons run at once (each a test node of its own: registry, CNI world,
daemon from its checkout's venv, one worker per pool) and take turns, in a
random order, for every sample:

- sequential: RunPodSandbox, CreateContainer, StartContainer, StopContainer,
  RemoveContainer, StopPodSandbox, RemovePodSandbox (shared PID namespace, so
  an infra process, as critest's pods); medians in ms;
- parallel: N pods with one container each started at once, the wall time
  until every StartContainer returned, per repetition;
- CPU: what each daemon's processes used (a cpuacct cgroup of its own,
  entered before the daemon starts: supervisor, workers, runc and CNI
  plugins, monitors until they move to their pod's cgroup), per lifecycle
  and per parallel pod.

    .venv/bin/python bench/start_ab.py OLD_CHECKOUT NEW_CHECKOUT \\
        [--lifecycles 30] [--pods 10] [--reps 5] [--handler crun] [--layers N]

``--layers N``: the containers run an image of N layers (busybox and N-1
small ones) instead of the one-layer busybox, for what a create costs per
layer.

Each checkout needs its own venv (``python3 -m venv .venv && .venv/bin/pip
install -e '.[test]'``); a commit can be exported with ``git archive``. Needs
root and cgroup v1's cpuacct (this VM's layout).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import daemonlib
import imagebuild
from podfixtures import APPLETS, Node, node

from podvisor.proto import api_pb2 as api

CPUACCT = Path("/sys/fs/cgroup/cpuacct")
WORKERS = {"runtime": 1, "storage": 1, "image": 1, "net": 1}


class Side:
    """One checkout's node, its cgroup and its samples."""

    def __init__(self, checkout: str) -> None:
        self.name = Path(checkout).name
        self.podvisor = str(Path(checkout, ".venv", "bin", "podvisor"))
        self.cgroup = CPUACCT / f"podvisor-ab-{self.name}-{os.getpid()}"
        self.times: dict[str, list[float]] = defaultdict(list)
        self.cpu_per_lifecycle: list[float] = []
        self.parallel: list[float] = []
        self.cpu_per_pod: list[float] = []
        self.node: Node | None = None

    def cpu_ms(self) -> float:
        return int((self.cgroup / "cpuacct.usage").read_text()) / 1e6

    def timed(self, name: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = call()
        self.times[name].append((time.perf_counter() - started) * 1000)
        return result

    def lifecycle(self, tag: str) -> None:
        n = self.node
        assert n is not None
        rt = n.daemon.runtime
        pod = n.pod_config(tag)
        pod_id = self.timed("RunPodSandbox", lambda: n.run_pod(pod))
        config = n.container_config("c", "sleep 3600")
        cid = self.timed("CreateContainer", lambda: n.create(pod_id, pod, config))
        self.timed("StartContainer", lambda: n.start(cid))
        self.timed("StopContainer", lambda: rt.StopContainer(
            api.StopContainerRequest(container_id=cid, timeout=0), timeout=30))
        self.timed("RemoveContainer", lambda: rt.RemoveContainer(
            api.RemoveContainerRequest(container_id=cid), timeout=30))
        self.timed("StopPodSandbox", lambda: rt.StopPodSandbox(
            api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30))
        self.timed("RemovePodSandbox", lambda: rt.RemovePodSandbox(
            api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30))

    def start_pods(self, rep: int, count: int) -> None:
        n = self.node
        assert n is not None

        def one(i: int) -> str:
            pod = n.pod_config(f"q{rep}-{i}")
            pod_id: str = n.run_pod(pod)
            n.run(pod_id, pod, n.container_config("c", "sleep 3600"))
            return pod_id

        cpu, started = self.cpu_ms(), time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            pod_ids = list(pool.map(one, range(count)))
        self.parallel.append(time.perf_counter() - started)
        self.cpu_per_pod.append((self.cpu_ms() - cpu) / count)
        for pod_id in pod_ids:
            n.remove_pod(pod_id)

    def summary(self, pods: int) -> dict[str, Any]:
        out: dict[str, Any] = {k: round(statistics.median(v), 1) for k, v in self.times.items()}
        out["CreateContainer + StartContainer"] = round(statistics.median(
            a + b for a, b in zip(self.times["CreateContainer"], self.times["StartContainer"],
                                  strict=True)), 1)
        out["CPU ms per lifecycle"] = round(statistics.median(self.cpu_per_lifecycle), 1)
        out[f"{pods} parallel pods, s (each rep)"] = [round(s, 2) for s in self.parallel]
        out[f"{pods} parallel pods, s (median)"] = round(statistics.median(self.parallel), 2)
        out["CPU ms per parallel pod"] = round(statistics.median(self.cpu_per_pod), 1)
        return out


def _use_layered_image(n: Node, layers: int) -> None:
    """Push and pull an image of ``layers`` layers; the node's containers run it."""
    image = imagebuild.build_image([imagebuild.busybox_layer(APPLETS), *(
        imagebuild.random_layer(256, f"data/{i}.bin") for i in range(layers - 1))])
    imagebuild.Pusher(n.registry).push_image("test/layered", "latest", image)
    n.image = f"{n.registry}/test/layered:latest"
    n.daemon.images.PullImage(api.PullImageRequest(image=api.ImageSpec(image=n.image)),
                              timeout=120)


def _remove_cgroups(sides: list[Side]) -> None:
    for side in sides:
        if side.cgroup.exists():
            side.cgroup.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--lifecycles", type=int, default=30)
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=1,
                        help="layers of the containers' image (default: busybox, 1)")
    parser.add_argument("--handler", default="", help="default_runtime of both daemons "
                        "(default: the configured default)")
    opts = parser.parse_args()
    sides = [Side(opts.old), Side(opts.new)]
    own = str(os.getpid())
    config = (f'[podvisor.runtime]\ndefault_runtime = "{opts.handler}"\n'
              if opts.handler else "")
    with contextlib.ExitStack() as stack:
        # Undone last: the daemons are gone by then, so the cgroups are empty.
        stack.callback(_remove_cgroups, sides)
        stack.callback(lambda: (CPUACCT / "cgroup.procs").write_text(own))
        for side in sides:
            side.cgroup.mkdir()
            # The daemon started next inherits the cgroup this process is in.
            (side.cgroup / "cgroup.procs").write_text(own)
            daemonlib.PODVISOR = side.podvisor
            side.node = stack.enter_context(node(workers=WORKERS, config=config))
            if opts.layers > 1:
                _use_layered_image(side.node, opts.layers)
        (CPUACCT / "cgroup.procs").write_text(own)
        for side in sides:  # warm-up, not counted
            side.lifecycle("warm")
            side.times.clear()
        for i in range(opts.lifecycles):
            for side in random.sample(sides, len(sides)):
                cpu = side.cpu_ms()
                side.lifecycle(f"p{i}")
                side.cpu_per_lifecycle.append(side.cpu_ms() - cpu)
        for rep in range(opts.reps):
            for side in random.sample(sides, len(sides)):
                side.start_pods(rep, opts.pods)
    for side in sides:
        print(side.name, json.dumps(side.summary(opts.pods)))


if __name__ == "__main__":
    main()
