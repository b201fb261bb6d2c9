"""How much the supervisor and the bus cost per call.

Measures Version latency through the full path (gRPC client -> supervisor
-> ZeroMQ -> runtime worker -> back) against a gRPC server in this process
whose Version handler answers directly, over the same kind of unix socket,
in the same run. Prints p50/p99 of each, sequentially and with 16
concurrent callers, and the ratios.

    .venv/bin/python bench/rpc_overhead.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc

from podvisor.proto import api_pb2 as api
from podvisor.proto import api_pb2_grpc as api_grpc

PODVISOR = str(Path(sys.executable).with_name("podvisor"))


class DirectRuntime(api_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    def Version(self, request: api.VersionRequest, context: object) -> api.VersionResponse:
        return api.VersionResponse(version="0.1.0", runtime_name="direct",
                                   runtime_version="0", runtime_api_version="v1")


def latencies(stub: api_grpc.RuntimeServiceStub, calls: int, concurrency: int) -> list[float]:
    def one() -> float:
        started = time.perf_counter()
        stub.Version(api.VersionRequest(), timeout=10)
        return time.perf_counter() - started

    for _ in range(50):  # warm-up: connections, code paths
        one()
    if concurrency == 1:
        return [one() for _ in range(calls)]
    with futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda _: one(), range(calls)))


def summary(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100)
    return q[49] * 1e3, q[98] * 1e3


def start_podvisor(base: Path) -> subprocess.Popen[bytes]:
    (base / "podvisor.toml").write_text(
        f'[podvisor]\nroot = "{base}/root"\nrunroot = "{base}/run"\nlog_level = "warn"\n'
        f'[podvisor.network]\nnetwork_dir = "{base}/cni"\n'
        "[podvisor.metrics]\nmetrics_port = 0\n")
    proc = subprocess.Popen([PODVISOR, "--config", str(base / "podvisor.toml"),
                             "--config-dir", str(base / "conf.d"), "run"],
                            start_new_session=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        addr = base / "run" / "health.addr"
        if addr.exists():
            out = subprocess.run([PODVISOR, "--config", str(base / "podvisor.toml"),
                                  "--config-dir", str(base / "conf.d"), "status", "--json"],
                                 capture_output=True, text=True, check=False)
            # NOT_STARTED: the stream worker waits for the first Exec/Attach/PortForward.
            if out.returncode == 0 and all(
                    w["state"] in ("READY", "NOT_STARTED")
                    for w in json.loads(out.stdout)["workers"]):
                return proc
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("podvisor did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pv-bench-"))
    (base / "conf.d").mkdir()
    direct = grpc.server(futures.ThreadPoolExecutor(16))
    api_grpc.add_RuntimeServiceServicer_to_server(DirectRuntime(), direct)
    direct.add_insecure_port(f"unix:{base}/direct.sock")
    direct.start()
    proc = start_podvisor(base)
    try:
        rows = []
        for concurrency in (1, 16):
            with grpc.insecure_channel(f"unix:{base}/direct.sock") as ch:
                d50, d99 = summary(latencies(api_grpc.RuntimeServiceStub(ch), args.calls,
                                             concurrency))
            with grpc.insecure_channel(f"unix:{base}/run/podvisor.sock") as ch:
                p50, p99 = summary(latencies(api_grpc.RuntimeServiceStub(ch), args.calls,
                                             concurrency))
            rows.append((concurrency, d50, d99, p50, p99))
        print(f"Version latency, {args.calls} calls per run (ms)")
        print("callers  direct p50  direct p99  podvisor p50  podvisor p99  ratio p50  ratio p99")
        for c, d50, d99, p50, p99 in rows:
            print(f"{c:>7}  {d50:>10.3f}  {d99:>10.3f}  {p50:>12.3f}  {p99:>12.3f}  "
                  f"{p50 / d50:>9.2f}  {p99 / d99:>9.2f}")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        direct.stop(0)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
