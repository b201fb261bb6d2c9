"""What status reads cost: PodSandboxStatus, ContainerStatus, ImageStatus and
ListImages through the CRI socket, with the supervisor's status cache off
(``status_cache_size = 0``: every read asks a worker, as before the cache)
and on, in the same run, on the same objects.

One daemon from the checkout (test registry, private CNI world), log level
warn; it is restarted between the two settings by a conf.d drop-in, and the
pods, which outlive it, are the same. For each setting:

- steady: R reads of each RPC in a row on one running pod and container
  (after a warm-up), p50 and p95;
- fresh: the critest ``-benchmark`` pattern, one read right after the
  change that made the object (RunPodSandbox, then PodSandboxStatus;
  Create+StartContainer, then ContainerStatus; PullImage, then
  ImageStatus), K times, p50.

    .venv/bin/python bench/status.py [--rounds 300] [--fresh 15]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import imagebuild
from benchlib import percentiles, timed
from podfixtures import APPLETS, Node, node

from podvisor.proto import api_pb2 as api

IDLE = "sleep 86400"


def set_cache(n: Node, size: int) -> None:
    """Restart the daemon with the cache at ``size`` entries (0: off)."""
    (n.daemon.base / "conf.d" / "90-bench.toml").write_text(
        f'[podvisor]\nlog_level = "warn"\n[podvisor.api]\nstatus_cache_size = {size}\n')
    n.daemon.stop()
    n.daemon.start()


def steady(n: Node, pod_id: str, container_id: str, rounds: int) -> dict[str, list[float]]:
    rt, im = n.daemon.runtime, n.daemon.images
    calls: dict[str, Callable[[], object]] = {
        "PodSandboxStatus": lambda: rt.PodSandboxStatus(
            api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10),
        "ContainerStatus": lambda: rt.ContainerStatus(
            api.ContainerStatusRequest(container_id=container_id), timeout=10),
        "ImageStatus": lambda: im.ImageStatus(
            api.ImageStatusRequest(image=api.ImageSpec(image=n.image)), timeout=10),
        "ListImages": lambda: im.ListImages(api.ListImagesRequest(), timeout=10),
    }
    for call in calls.values():
        timed(call, 30)  # warm-up: connection, code paths
    return {name: timed(call, rounds) for name, call in calls.items()}


def once(call: Callable[..., object], request: object) -> float:
    start = time.perf_counter()
    call(request, timeout=10)
    return time.perf_counter() - start


def fresh(n: Node, pulled: str, count: int, tag: str) -> dict[str, list[float]]:
    rt, im = n.daemon.runtime, n.daemon.images
    out: dict[str, list[float]] = {"PodSandboxStatus": [], "ContainerStatus": [],
                                   "ImageStatus": []}
    for i in range(count):
        config = n.pod_config(f"fresh-{tag}-{i}")
        pod_id = n.run_pod(config)
        out["PodSandboxStatus"].append(once(
            rt.PodSandboxStatus, api.PodSandboxStatusRequest(pod_sandbox_id=pod_id)))
        container_id = n.run(pod_id, config, n.container_config("c", IDLE))
        out["ContainerStatus"].append(once(
            rt.ContainerStatus, api.ContainerStatusRequest(container_id=container_id)))
        n.remove_pod(pod_id)
        spec = api.ImageSpec(image=pulled)
        im.PullImage(api.PullImageRequest(image=spec), timeout=120)
        out["ImageStatus"].append(once(im.ImageStatus, api.ImageStatusRequest(image=spec)))
        im.RemoveImage(api.RemoveImageRequest(image=spec), timeout=60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--fresh", type=int, default=15)
    args = parser.parse_args()
    with node() as n:
        pulled = f"{n.registry}/test/pulled:1"
        imagebuild.Pusher(n.registry).push_image("test/pulled", "1", imagebuild.build_image(
            [imagebuild.busybox_layer(APPLETS[:2])]))
        config = n.pod_config("steady")
        pod_id = n.run_pod(config)
        container_id = n.run(pod_id, config, n.container_config("idle", IDLE))
        results = {}
        for label, size in (("off", 0), ("on", 4096)):
            set_cache(n, size)
            results[label] = (steady(n, pod_id, container_id, args.rounds),
                              fresh(n, pulled, args.fresh, label))
        n.remove_pod(pod_id)
    print(f"Steady reads, {args.rounds} in a row each (ms)")
    print(f"{'RPC':<18} {'off p50':>8} {'off p95':>8} {'on p50':>8} {'on p95':>8} {'on/off':>7}")
    for rpc in results["off"][0]:
        off50, off95 = percentiles(results["off"][0][rpc])
        on50, on95 = percentiles(results["on"][0][rpc])
        print(f"{rpc:<18} {off50:>8.3f} {off95:>8.3f} {on50:>8.3f} {on95:>8.3f} "
              f"{on50 / off50:>7.2f}")
    print(f"\nFirst read right after the change, {args.fresh} times (ms)")
    print(f"{'RPC':<18} {'off p50':>8} {'on p50':>8} {'on/off':>7}")
    for rpc in results["off"][1]:
        off50, _ = percentiles(results["off"][1][rpc])
        on50, _ = percentiles(results["on"][1][rpc])
        print(f"{rpc:<18} {off50:>8.3f} {on50:>8.3f} {on50 / off50:>7.2f}")


if __name__ == "__main__":
    main()
