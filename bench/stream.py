"""What the streaming server costs: exec round trips and port-forward throughput.

In one run, against one daemon started from the checkout (test registry,
private CNI world, busybox pod), with everything removed at the end:

- exec latency, N rounds (interleaved): the Exec RPC, then a minimal SPDY
  v4 client (``FrameCodec`` over a socket: POST upgrade, error and stdout
  streams) running ``echo x`` in a running container, until the exit
  status arrives on the error stream; ``crictl exec`` of the same (its
  process start included); and the floor, the default handler's own
  ``<runtime> --root <handler root> exec <id> echo x`` on the same container;
- port-forward throughput: a 64 MiB file from busybox httpd in the pod,
  downloaded M times by the same Python HTTP client through ``crictl
  port-forward`` (SPDY, and ``-r websocket``: SPDY tunnelled in a
  WebSocket) and directly from the pod IP.

    .venv/bin/python bench/stream.py [--execs 50] [--downloads 3]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from daemonlib import interrupt, poll_until
from podfixtures import Node, node

from podvisor.proto import api_pb2 as api
from podvisor.workers.stream import spdy

CRICTL = shutil.which("crictl") or "/usr/local/bin/crictl"
WEB_PORT = 8080
BIG_MIB = 64
IDLE = "trap 'exit 0' TERM; sleep 86400 & wait"
WEB = ("trap 'exit 0' TERM; mkdir -p /www && echo small > /www/small && "
       f"busybox dd if=/dev/zero of=/www/big bs=1M count={BIG_MIB} 2>/dev/null && "
       f"busybox httpd -f -p {WEB_PORT} -h /www & wait")


def summary(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1e3, q[98] * 1e3


# --- a minimal SPDY v4 exec client --------------------------------------------


def spdy_exec(url: str) -> tuple[bytes, bytes]:
    """(stdout, error stream) of the exec behind ``url``: streams error (1)
    and stdout (3), each opened once the previous one is answered; returns
    when both have ended (FIN, RST or GOAWAY)."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port, url
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     "Content-Length: 0\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                     "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError(f"closed during the upgrade: {head!r}")
            head += more
        head, rest = head.split(b"\r\n\r\n", 1)
        if head.split(b" ", 2)[1] != b"101":
            raise ConnectionError(f"upgrade refused: {head!r}")
        codec = spdy.FrameCodec()
        received = {1: bytearray(), 3: bytearray()}
        replied: set[int] = set()
        ended: set[int] = set()

        def until(done: Callable[[], bool], data: bytes = b"") -> None:
            while True:
                for frame in codec.feed(data):
                    match frame:
                        case spdy.SynReply(stream_id=sid, fin=fin):
                            replied.add(sid)
                            if fin:
                                ended.add(sid)
                        case spdy.Data(stream_id=sid, data=chunk, fin=fin):
                            received[sid] += chunk
                            if fin:
                                ended.add(sid)
                        case spdy.RstStream(stream_id=sid):
                            replied.add(sid)
                            ended.add(sid)
                        case spdy.GoAway():
                            replied.update(received)
                            ended.update(received)
                        case spdy.Ping(ping_id=pid) if pid % 2 == 0:
                            sock.sendall(codec.encode(frame))
                if done():
                    return
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("connection lost")

        for sid, kind in ((1, "error"), (3, "stdout")):
            sock.sendall(codec.encode(spdy.SynStream(sid, {"streamtype": [kind]})))
            until(partial(set.__contains__, replied, sid), rest)
            rest = b""
        until(lambda: ended >= {1, 3})
        with contextlib.suppress(OSError):
            sock.sendall(codec.encode(spdy.GoAway(0)))
    return bytes(received[3]), bytes(received[1])


# --- exec latency -------------------------------------------------------------------


def crictl(n: Node, *args: str) -> list[str]:
    endpoint = f"unix://{n.daemon.socket}"
    return [CRICTL, "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
            "--timeout", "60s", *args]


def default_handler(n: Node) -> tuple[str, str]:
    """The default handler's binary and --root, from the daemon's effective
    configuration."""
    out = n.daemon.cli("config")
    assert out.returncode == 0, out.stderr
    runtime = tomllib.loads(out.stdout)["podvisor"]["runtime"]
    handler = runtime["runtimes"][runtime["default_runtime"]]
    return str(handler["runtime_path"]), str(handler["runtime_root"])


def exec_latencies(n: Node, cid: str, rounds: int) -> dict[str, list[float]]:
    binary, root = default_handler(n)

    def via_spdy() -> None:
        url = n.daemon.runtime.Exec(api.ExecRequest(
            container_id=cid, cmd=["echo", "x"], stdout=True), timeout=30).url
        out, error = spdy_exec(url)
        assert out == b"x\n" and (not error or json.loads(error)["status"] == "Success"), error

    def via_crictl() -> None:
        out = subprocess.run(crictl(n, "exec", cid, "echo", "x"), capture_output=True,
                             timeout=60, check=True).stdout
        assert out == b"x\n", out

    def via_runtime() -> None:
        out = subprocess.run([binary, "--root", root, "exec", cid, "echo", "x"],
                             capture_output=True, timeout=60, check=True).stdout
        assert out == b"x\n", out

    ways = {"spdy": via_spdy, "crictl": via_crictl, "runtime": via_runtime}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for i in range(rounds + 3):  # 3 warm-up rounds, not counted
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            if i >= 3:
                times[name].append(time.perf_counter() - started)
    return times


# --- port-forward throughput ------------------------------------------------------


def download(host: str, port: int, path: str) -> tuple[int, float]:
    """Bytes of ``path`` and the seconds from the request to its last byte."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        size = 0
        while chunk := resp.read(1 << 20):
            size += len(chunk)
        return size, time.perf_counter() - started
    finally:
        conn.close()


def rates(host: str, port: int, count: int) -> list[float]:
    download(host, port, "/small")  # warm-up: the forwarded connection's setup
    out = []
    for _ in range(count):
        size, secs = download(host, port, "/big")
        assert size == BIG_MIB << 20, size
        out.append(size / secs / 1e6)
    return out


@contextlib.contextmanager
def port_forward(n: Node, pod_id: str, transport: str) -> Iterator[int]:
    """``crictl port-forward -r <transport>`` to WEB_PORT; the local port."""
    proc = subprocess.Popen(crictl(n, "port-forward", "-r", transport, pod_id, f"0:{WEB_PORT}"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdout is not None
        seen, deadline = b"", time.monotonic() + 30
        while not (found := re.search(rb"Forwarding from 127\.0\.0\.1:(\d+)", seen)):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                raise SystemExit(f"crictl port-forward did not start: {seen!r}")
            more = os.read(proc.stdout.fileno(), 4096)
            if not more:
                raise SystemExit(f"crictl port-forward exited: {seen!r}")
            seen += more
        yield int(found[1])
        assert proc.poll() is None, "crictl port-forward died"
    finally:
        interrupt(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--execs", type=int, default=50)
    parser.add_argument("--downloads", type=int, default=3)
    args = parser.parse_args()
    with node(workers={"runtime": 2, "storage": 1, "net": 1, "image": 1}) as n:
        pod = n.pod_config("stream-bench")
        pod_id = n.run_pod(pod)
        try:
            shell = n.run(pod_id, pod, n.container_config("shell", IDLE))
            web = n.run(pod_id, pod, n.container_config("web", WEB))
            for cid in (shell, web):
                n.wait_state(cid, api.CONTAINER_RUNNING)
            ip = n.pod_status(pod_id).status.network.ip
            poll_until(lambda: download(ip, WEB_PORT, "/small")[0] == 6, 60, interval=0.2,
                       what="httpd answering")

            lat = exec_latencies(n, shell, args.execs)
            floor_name = Path(default_handler(n)[0]).name
            direct = rates(ip, WEB_PORT, args.downloads)
            forwarded = {}
            for transport in ("spdy", "websocket"):
                with port_forward(n, pod_id, transport) as port:
                    forwarded[transport] = rates("127.0.0.1", port, args.downloads)
        finally:
            n.remove_pod(pod_id)

    r50, r99 = summary(lat["runtime"])
    print(f"Exec of `echo x` in a running busybox container, {args.execs} rounds (ms)")
    print()
    print("| path | p50 | p99 | ratio p50 | ratio p99 |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (("runtime", f"`{floor_name} exec` (floor)"),
                        ("spdy", "podvisor: Exec RPC + SPDY v4 client"),
                        ("crictl", "podvisor: `crictl exec` (process start included)")):
        p50, p99 = summary(lat[name])
        print(f"| {label} | {p50:.2f} | {p99:.2f} | {p50 / r50:.2f} | {p99 / r99:.2f} |")
    print()
    base = statistics.median(direct)
    print(f"Download of a {BIG_MIB} MiB file from busybox httpd, {args.downloads} times "
          "(MB/s, 1 MB = 10^6 bytes)")
    print()
    print("| path | median | min | max | ratio median |")
    print("|---|---:|---:|---:|---:|")
    for label, values in (("pod IP, direct", direct),
                          ("`crictl port-forward` (SPDY)", forwarded["spdy"]),
                          ("`crictl port-forward -r websocket`", forwarded["websocket"])):
        med = statistics.median(values)
        print(f"| {label} | {med:.1f} | {min(values):.1f} | {max(values):.1f} "
              f"| {med / base:.3f} |")
    print()
    print("command: " + " ".join([".venv/bin/python", "bench/stream.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
