"""Density and speed beside containerd, in one run: the same crictl workloads
against podvisor and Debian's containerd, started one after the other with
the conformance kit's scripts, and bare ``runc run -d`` as the floor.

For each runtime, in this order, with nothing else running:

- ``crictl-parallel-pods.sh``: 10 parallel pods to Running (3 repetitions)
  and 50 (2 repetitions), then stop + remove; the medians, and how many
  chains failed;
- ``critest -benchmark`` with ``benchmark-params.yaml``: the median of each
  operation (20 sequential samples);
- ``mem-pods.sh`` with 10 and with 50 pods: daemon PSS (for podvisor the
  supervisor, the zygote and every worker) and PSS per monitor.

Then the floor: N bundles started with ``runc run -d`` in parallel
(bench/pod_start.py), for N = 10 and 50.

Prints markdown tables with the podvisor / containerd ratio; the raw output
of every script goes to ``--out`` (default /tmp/density-<time>).

    .venv/bin/python bench/density.py [--quick]

``--quick``: 5 pods instead of 10 and 50, one repetition, and no critest
(a check of the bench itself, not figures to publish).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
KIT = CHECKOUT.parent / "shared" / "conformance"


@dataclass(frozen=True)
class Runtime:
    name: str
    endpoint: str
    up: str
    down: str
    pidfile: str
    # mem-pods.sh's arguments after ENDPOINT and PID: the monitor's name,
    # and its environment (how it finds daemon and monitors).
    monitor: str
    mem_env: dict[str, str]


CONTAINERD = Runtime("containerd", "unix:///run/containerd/containerd.sock",
                     "containerd-up.sh", "containerd-down.sh", "/run/harness-containerd.pid",
                     "containerd-shim-runc-v2", {})
PODVISOR = Runtime("podvisor", "unix:///run/podvisor-harness/podvisor.sock",
                   "podvisor-up.sh", "podvisor-down.sh", "/run/harness-podvisor.pid",
                   "podvisor-conmon", {"DAEMON_TREE": "1", "MONITOR_BY": "cmdline"})

# critest -benchmark operation names, and how the README calls them.
BENCH_OPS = (("CreatePod", "RunPodSandbox"), ("StatusPod", "PodSandboxStatus"),
             ("StopPod", "StopPodSandbox"), ("RemovePod", "RemovePodSandbox"),
             ("CreateContainer", "CreateContainer"), ("StartContainer", "StartContainer"),
             ("StatusContainer", "ContainerStatus"), ("StopContainer", "StopContainer"),
             ("RemoveContainer", "RemoveContainer"), ("PullImage", "PullImage"),
             ("StatusImage", "ImageStatus"), ("RemoveImage", "RemoveImage"),
             ("ListImages", "ListImages"))


@dataclass
class Figures:
    """One runtime's results; keys are the row names of the tables."""

    seconds: dict[str, float] = field(default_factory=dict)
    millis: dict[str, float] = field(default_factory=dict)
    mib: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def kit(script: str, *args: str, env: dict[str, str] | None = None, log: Path,
        check: bool = True) -> str:
    """Run one of the kit's scripts from the checkout; its output, also logged."""
    done = subprocess.run([str(KIT / script), *args], cwd=CHECKOUT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, check=False)
    with log.open("a") as f:
        f.write(f"$ {script} {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    if check and done.returncode != 0:
        raise SystemExit(f"{script} failed ({done.returncode}); see {log}")
    return done.stdout + done.stderr


def parallel_pods(rt: Runtime, pods: int, reps: int, figures: Figures, log: Path) -> None:
    out = kit("crictl-parallel-pods.sh", rt.endpoint, str(pods), str(reps), log=log)
    median = re.search(r"median: create\+start \d+ pods ([\d.]+) s, stop\+remove ([\d.]+) s",
                       out)
    if median is None:
        raise SystemExit(f"no median in crictl-parallel-pods.sh's output; see {log}")
    figures.seconds[f"{pods} parallel pods to Running"] = float(median[1])
    figures.seconds[f"{pods} pods stop + remove"] = float(median[2])
    figures.failures += re.findall(r"rep \d+: (?:only \d+/\d+ chains succeeded|not all running.*)",
                                   out)


def critest_benchmark(rt: Runtime, figures: Figures, out: Path, log: Path) -> None:
    report = out / f"critest-{rt.name}"
    data = out / f"benchmark-{rt.name}"
    data.mkdir(parents=True, exist_ok=True)
    kit("run-critest.sh", rt.endpoint, "-benchmark",
        "--benchmarking-params-file", str(KIT / "benchmark-params.yaml"),
        "--benchmarking-output-dir", str(data), env={"REPORT_DIR": str(report)}, log=log,
        check=False)
    samples = bench_summary().load(str(data))
    for op, name in BENCH_OPS:
        if samples.get(op):
            figures.millis[name] = statistics.median(samples[op])
    if "CreateContainer" in figures.millis and "StartContainer" in figures.millis:
        figures.millis["CreateContainer + StartContainer"] = (
            figures.millis["CreateContainer"] + figures.millis["StartContainer"])


def bench_summary() -> ModuleType:
    """The kit's bench-summary.py, whose loader reads critest's JSON files."""
    spec = importlib.util.spec_from_file_location("bench_summary", KIT / "bench-summary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def memory(rt: Runtime, pods: int, figures: Figures, log: Path) -> None:
    pid = Path(rt.pidfile).read_text().strip()
    out = kit("mem-pods.sh", rt.endpoint, pid, rt.monitor, str(pods), env=rt.mem_env, log=log)
    daemon = re.search(r"^daemon .*PSS ([\d.]+) MiB$", out, re.MULTILINE)
    monitors = re.search(r"PSS total ([\d.]+) MiB \(mean (\d+) kB\)", out)
    if daemon is None or monitors is None:
        raise SystemExit(f"mem-pods.sh printed no PSS; see {log}")
    figures.mib[f"daemon PSS, {pods} pods"] = float(daemon[1])
    figures.mib[f"PSS per monitor, {pods} pods"] = int(monitors[2]) / 1024
    figures.mib[f"daemon + monitors PSS, {pods} pods"] = float(daemon[1]) + float(monitors[1])


def measure(rt: Runtime, sizes: list[tuple[int, int]], with_critest: bool, out: Path,
            log: Path) -> Figures:
    figures = Figures()
    kit(rt.up, log=log)
    try:
        for pods, reps in sizes:
            parallel_pods(rt, pods, reps, figures, log)
        if with_critest:
            critest_benchmark(rt, figures, out, log)
        for pods, _ in sizes:
            memory(rt, pods, figures, log)
    finally:
        kit(rt.down, log=log, check=False)
    return figures


def floor(sizes: list[tuple[int, int]]) -> Figures:
    """Bare runc: N prepared bundles started in parallel (bench/pod_start.py)."""
    sys.path.insert(0, str(HERE))
    from pod_start import PR_SET_CHILD_SUBREAPER, prepare_bundles, remove_bare, run_bare

    # The containers whose runc exited are ours to reap (remove_bare does).
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    figures = Figures()
    for pods, _ in sizes:
        with tempfile.TemporaryDirectory(prefix="density-runc-") as tmp:
            base = Path(tmp)
            bundles = prepare_bundles(base, pods, "runc")
            try:
                _, wall = run_bare("runc", base / "state", bundles)
            finally:
                remove_bare("runc", base / "state", bundles)
        figures.seconds[f"{pods} parallel pods to Running"] = wall
    return figures


def table(title: str, unit: str, rows: list[str], pick: Callable[[Figures], dict[str, float]],
          pv: Figures, cd: Figures, bare: Figures | None = None) -> str:
    head = f"| {title} | podvisor | containerd | podvisor / containerd |"
    rule = "| --- | --- | --- | --- |"
    if bare is not None:
        head, rule = head + " bare runc |", rule + " --- |"
    lines = [head, rule]
    for row in rows:
        ours, theirs = pick(pv).get(row), pick(cd).get(row)
        if ours is None or theirs is None:
            continue
        line = f"| {row} | {ours:.2f} {unit} | {theirs:.2f} {unit} | {ours / theirs:.2f} |"
        if bare is not None:
            floor_value = pick(bare).get(row)
            line += f" {floor_value:.2f} {unit} |" if floor_value is not None else " |"
        lines.append(line)
    return "\n".join(lines)


def report(pv: Figures, cd: Figures, bare: Figures, sizes: list[tuple[int, int]]) -> str:
    pod_rows = [f"{pods} {what}" for pods, _ in sizes
                for what in ("parallel pods to Running", "pods stop + remove")]
    mem_rows = [f"{what}, {pods} pods" for pods, _ in sizes
                for what in ("daemon PSS", "PSS per monitor", "daemon + monitors PSS")]
    bench_rows = [name for _, name in BENCH_OPS] + ["CreateContainer + StartContainer"]
    parts = [table("crictl-parallel-pods.sh (medians)", "s", pod_rows, lambda f: f.seconds,
                   pv, cd, bare),
             table("critest -benchmark (medians)", "ms", bench_rows, lambda f: f.millis, pv, cd),
             table("mem-pods.sh", "MiB", mem_rows, lambda f: f.mib, pv, cd)]
    for name, figures in (("podvisor", pv), ("containerd", cd)):
        parts += [f"{name}: {failure}" for failure in figures.failures]
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path,
                        default=Path(f"/tmp/density-{time.strftime('%Y%m%dT%H%M%S')}"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "scripts.log"
    sizes = [(5, 1)] if args.quick else [(10, 3), (50, 2)]
    kit("install-tools.sh", log=log)
    kit("registry-up.sh", log=log)
    kit("images.py", log=log)
    cd = measure(CONTAINERD, sizes, not args.quick, args.out, log)
    pv = measure(PODVISOR, sizes, not args.quick, args.out, log)
    bare = floor(sizes)
    text = report(pv, cd, bare, sizes)
    (args.out / "tables.md").write_text(text + "\n")
    print(text)
    print(f"\n(raw output: {args.out})")


if __name__ == "__main__":
    main()
