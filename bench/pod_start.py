"""How long pods take to start, per handler, against the floor of the bare
OCI runtime's ``run -d``.

For N = 10 and N = 50 and each handler (crun, the default, and runc), in one run:

- podvisor: N pods started in parallel through the CRI socket, each
  RunPodSandbox (CNI bridge network, the kubelet's default namespaces: no
  shared PID namespace, so no infra process) + CreateContainer +
  StartContainer of one busybox container from the test registry; per-pod
  time from its first call until StartContainer returned (the container is
  Running), and the wall time until all are; then the time to stop and
  remove them, one after the other;
- floor: N ``<runtime> run -d`` of busybox containers from bundles prepared
  beforehand (rootfs copied, config.json written), in parallel, timed the
  same way, then N ``<runtime> delete --force``, one after the other.

Two pods per handler go first, unmeasured. Also the memory of one conmon
(RSS and PSS from smaps_rollup) and of the idle daemon (supervisor and its
workers). Everything is removed at the end.

    .venv/bin/python bench/pod_start.py [--sizes 10 50] [--handlers crun runc]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from podfixtures import Node, node

from podvisor.proto import api_pb2 as api

PR_SET_CHILD_SUBREAPER = 36


def percentiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], samples[0]
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49], q[98]


def start_pods(n: Node, count: int, handler: str) -> tuple[list[float], float, list[str]]:
    # What the kubelet sends for an ordinary pod: no shared PID namespace
    # (so no infra process), each container in its own.
    options = api.NamespaceOption(pid=api.CONTAINER)
    linux = api.LinuxContainerConfig(
        security_context=api.LinuxContainerSecurityContext(namespace_options=options))

    def one(i: int) -> tuple[float, str]:
        started = time.monotonic()
        pod = n.pod_config(f"bench{count}-{handler}-{i}", share_pid=False)
        pod_id = n.run_pod(pod, handler)
        n.run(pod_id, pod, n.container_config("app", "sleep 3600", linux=linux))
        return time.monotonic() - started, pod_id

    wall = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(one, range(count)))
    return [r[0] for r in results], time.monotonic() - wall, [r[1] for r in results]


def prepare_bundles(base: Path, count: int, runtime: str) -> list[Path]:
    template = base / "template"
    (template / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", template / "rootfs" / "bin" / "busybox")
    for applet in ("sh", "sleep"):
        (template / "rootfs" / "bin" / applet).symlink_to("busybox")
    subprocess.run(["runc", "spec", "--bundle", str(template)], check=True)
    spec = json.loads((template / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/sleep", "3600"]
    spec["process"].pop("oomScoreAdj", None)
    bundles = []
    for i in range(count):
        bundle = base / f"b{i}"
        shutil.copytree(template, bundle, symlinks=True)
        spec["linux"]["cgroupsPath"] = f"/podvisor-bench/{runtime}-{i}"
        (bundle / "config.json").write_text(json.dumps(spec))
        bundles.append(bundle)
    return bundles


def run_bare(runtime: str, root: Path, bundles: list[Path]) -> tuple[list[float], float]:
    def one(bundle: Path) -> float:
        started = time.monotonic()
        subprocess.run([runtime, "--root", str(root), "run", "-d", "--bundle", str(bundle),
                        f"bench-{bundle.name}"], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.monotonic() - started

    wall = time.monotonic()
    with ThreadPoolExecutor(len(bundles)) as pool:
        times = list(pool.map(one, bundles))
    return times, time.monotonic() - wall


def remove_bare(runtime: str, root: Path, bundles: list[Path]) -> list[float]:
    """Each container's ``delete --force``, one after the other: their times."""
    times = []
    for bundle in bundles:
        started = time.monotonic()
        subprocess.run([runtime, "--root", str(root), "delete", "--force",
                        f"bench-{bundle.name}"], check=False, capture_output=True)
        times.append(time.monotonic() - started)
    for name in os.listdir("/sys/fs/cgroup"):
        path = Path("/sys/fs/cgroup", name, "podvisor-bench")
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir():
                    child.rmdir()
            path.rmdir()
    reap()
    return times


def reap() -> None:
    # The bench is a subreaper: containers whose runtime exited are its to reap.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def memory(pid: int) -> tuple[int, int]:
    """RSS and PSS of ``pid`` in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        values[key] = int(value.split()[0])
    return values["Rss"], values["Pss"]


def daemon_memory(n: Node) -> tuple[int, int]:
    pids = [n.daemon.pid] + [w["pid"] for w in n.daemon.status()["workers"] if w["pid"]]
    totals = [memory(pid) for pid in pids]
    return sum(t[0] for t in totals), sum(t[1] for t in totals)


def conmon_pid(n: Node) -> int:
    for pidfile in (n.daemon.runroot / "c").glob("*/conmon.pid"):
        return int(pidfile.read_text())
    raise SystemExit("no conmon running")


def measure(n: Node, count: int, handler: str) -> tuple[float, ...]:
    """One sample: podvisor's p50, p99, total and removal; the bare runtime's
    p50, p99, total and median delete."""
    times, wall, pods = start_pods(n, count, handler)
    removal = time.monotonic()
    for pod_id in pods:
        n.remove_pod(pod_id)
    removal = time.monotonic() - removal
    base = Path(tempfile.mkdtemp(prefix="pv-bench-"))
    try:
        bundles = prepare_bundles(base, count, handler)
        bare, bare_wall = run_bare(handler, base / handler, bundles)
        deletes = remove_bare(handler, base / handler, bundles)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return (*percentiles(times), wall, removal, *percentiles(bare), bare_wall,
            statistics.median(deletes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--handlers", nargs="+", default=["crun", "runc"],
                        help="podvisor handlers, each also run bare as the floor")
    parser.add_argument("--rounds", type=int, default=3,
                        help="samples per size and handler, the handlers' order "
                             "reversed every round; the table shows medians")
    args = parser.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    samples: dict[tuple[int, str], list[tuple[float, ...]]] = {}
    with node(workers={"runtime": 2, "storage": 2, "net": 2, "image": 1}) as n:
        idle = daemon_memory(n)
        # Unmeasured: the image pull, the workers' and the monitor zygote's
        # first calls, and each runtime's first exec, which would otherwise
        # all fall on whichever handler comes first.
        for handler in args.handlers:
            for pod_id in start_pods(n, 2, handler)[2]:
                n.remove_pod(pod_id)
        pods = start_pods(n, 1, args.handlers[0])[2]
        conmon = memory(conmon_pid(n))
        n.remove_pod(pods[0])
        for count in args.sizes:
            for round_ in range(args.rounds):
                order = args.handlers if round_ % 2 == 0 else args.handlers[::-1]
                for handler in order:
                    samples.setdefault((count, handler), []).append(
                        measure(n, count, handler))
    print("Pods started in parallel, one container each, then stopped and removed one")
    print("by one; the bare runtime's run -d in parallel and delete --force one by one.")
    print(f"Medians of {args.rounds} rounds; seconds, except the bare delete in ms.")
    print("    N  handler  podvisor p50    p99  total  remove   bare p50    p99  total"
          "  delete ms  ratio total")
    for (count, handler), rows in samples.items():
        p50, p99, wall, removal, b50, b99, bwall, delete = (
            statistics.median(column) for column in zip(*rows, strict=True))
        print(f"{count:>5}  {handler:<7}  {p50:>12.2f}  {p99:>5.2f}  {wall:>5.2f}  {removal:>6.2f}"
              f"  {b50:>9.3f}  {b99:>5.3f}  {bwall:>5.2f}  {delete * 1000:>9.1f}"
              f"  {wall / bwall:>11.1f}")
    print(f"one podvisor-conmon: RSS {conmon[0]} KiB, PSS {conmon[1]} KiB")
    print("idle daemon (supervisor and its 7 workers): "
          f"RSS {idle[0]} KiB, PSS {idle[1]} KiB")


if __name__ == "__main__":
    main()
