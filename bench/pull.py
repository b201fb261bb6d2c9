"""Pull throughput: podvisor's PullImage against ``skopeo copy``, same run.

Builds one image of random layers (default 4 x 50 MB, uncompressed tar
layers, media type ``...layer.v1.tar``: random bytes do not compress, and
neither side decompresses while pulling, so gzip would only change the
build time), pushes it to Debian's docker-registry started here on
127.0.0.1, then alternates, round by round:

- podvisor: PullImage through the CRI socket of a daemon started here on a
  private run dir (the pull runs in an image worker: registry -> sha256
  while streaming -> content store), then RemoveImage;
- skopeo: ``skopeo copy --src-tls-verify=false docker://... dir:...`` of
  the same image (skopeo also verifies every blob's digest), then the
  directory is removed.

The order inside a round alternates (ABBA) and one untimed round of each
warms the registry's page cache, so neither side is favoured. Prints MB/s
(MB = 10^6 bytes of blobs: layers + config) per round, the medians and the
podvisor/skopeo ratio.

Before that, the registry client alone (no daemon, no store), layer blobs
fetched in this process into a sha256 sink, rotating round by round among:

- ``socket``: a raw socket sending the GET and ``recv_into`` one buffer
  (the floor any HTTP client pays, plus the same hashing);
- ``curl``: ``curl -o /dev/null`` of each blob (no hashing);
- ``http.client``: the hand-written transport podvisor had before urllib3,
  loaded from git (the last revision of workers/image/transport.py built
  on http.client) together with the registry.py of that revision;
- ``urllib3``: today's RegistryClient on today's transport.

Everything started here is stopped by its pid, and the temp dir is removed.

    .venv/bin/python bench/pull.py [--layers 4] [--layer-mb 50] [--rounds 9]
                                   [--transport-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The image builder, the registry runner and the daemon runner of the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import imagebuild as build
from daemonlib import Daemon
from registry import start_registry

from podvisor.proto import api_pb2 as api
from podvisor.workers.base import OpContext
from podvisor.workers.image import registry as new_registry
from podvisor.workers.image.tls import TlsPolicy
from podvisor.workers.image.transport import Transport
from podvisor.workers.image.watchdog import Watchdog

REPO, TAG = "bench/random", "1"
PULL_DEADLINE = 600.0
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "podvisor.workers.image"


# ---- the registry client alone -------------------------------------------------


class HashSink:
    """A BlobSink that only hashes (the store's ingest also writes a file)."""

    def __init__(self) -> None:
        self.offset = 0
        self._hash = hashlib.sha256()

    def write(self, data: memoryview) -> None:
        self._hash.update(data)
        self.offset += len(data)

    def reset(self) -> None:
        self.offset = 0
        self._hash = hashlib.sha256()

    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"


def old_registry_module() -> types.ModuleType:
    """registry.py + transport.py of the last http.client revision, loaded
    beside today's modules (auth, errors, watchdog are unchanged)."""
    revs = subprocess.run(["git", "-C", str(ROOT), "log", "--format=%H", "--",
                           "workers/image/transport.py"], capture_output=True, text=True,
                          check=True).stdout.split()
    for rev in revs:
        transport = subprocess.run(["git", "-C", str(ROOT), "show",
                                    f"{rev}:workers/image/transport.py"],
                                   capture_output=True, text=True, check=True).stdout
        if "import http.client" in transport and "urllib3" not in transport:
            break
    else:
        raise SystemExit("no http.client revision of workers/image/transport.py in git")
    registry = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:workers/image/registry.py"],
                              capture_output=True, text=True, check=True).stdout
    registry = registry.replace("from .transport import", "from ._bench_old_transport import")
    modules = {}
    for name, source in (("_bench_old_transport", transport), ("_bench_old_registry", registry)):
        module = types.ModuleType(f"{PACKAGE}.{name}")
        module.__package__ = PACKAGE
        sys.modules[module.__name__] = module
        exec(compile(source, f"{rev[:10]}:{name}", "exec"), module.__dict__)
        modules[name] = module
    print(f"http.client transport from revision {rev[:10]}", flush=True)
    return modules["_bench_old_registry"]


def client_fetcher(registry_module: types.ModuleType, transport: Any, host: str
                   ) -> Callable[[str], str]:
    def fetch(digest: str) -> str:
        ctx = OpContext(request_id=secrets.token_bytes(16), op="bench", deadline=time.monotonic()
                        + PULL_DEADLINE)
        with Watchdog(ctx, 0, digest) as watchdog:
            client = registry_module.RegistryClient(transport, host, insecure=True,
                                                    credentials=None, watchdog=watchdog)
            sink = HashSink()
            client.fetch_blob(REPO, digest, sink)
        return sink.digest()
    return fetch


def socket_fetcher(host: str) -> Callable[[str], str]:
    address, port = host.rsplit(":", 1)

    def fetch(digest: str) -> str:
        with socket.create_connection((address, int(port))) as sock:
            sock.sendall(f"GET /v2/{REPO}/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n"
                         "Connection: close\r\n\r\n".encode())
            buffer = memoryview(bytearray(1 << 20))
            digest_of = hashlib.sha256()
            head = b""
            while True:
                count = sock.recv_into(buffer)
                if not count:
                    break
                if head is not None:
                    head += bytes(buffer[:count])
                    if b"\r\n\r\n" not in head:
                        continue
                    digest_of.update(head.split(b"\r\n\r\n", 1)[1])
                    head = None
                    continue
                digest_of.update(buffer[:count])
        return f"sha256:{digest_of.hexdigest()}"
    return fetch


def curl_fetcher(host: str) -> Callable[[str], str]:
    def fetch(digest: str) -> str:
        subprocess.run(["curl", "-sf", "-o", "/dev/null",
                        f"http://{host}/v2/{REPO}/blobs/{digest}"], check=True)
        return digest  # curl hashes nothing
    return fetch


def transport_bench(host: str, image: build.Image, megabytes: float, rounds: int) -> None:
    fetchers = {
        "socket": socket_fetcher(host),
        "http.client": client_fetcher(old_registry_module(),
                                      sys.modules[f"{PACKAGE}._bench_old_transport"].Transport(
                                          TlsPolicy(())), host),
        "urllib3": client_fetcher(new_registry, Transport(TlsPolicy(())), host),
    }
    if shutil.which("curl"):
        fetchers["curl"] = curl_fetcher(host)
    digests = [b.digest for b in image.layers] + [image.config.digest]
    for fetch in fetchers.values():  # warm-up, untimed (and a check)
        for digest in digests:
            got = fetch(digest)
            if got != digest:
                raise SystemExit(f"fetched {digest} but it hashes to {got}")
    names = list(fetchers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        # Rotate the order so no client always follows another.
        for name in names[i % len(names):] + names[:i % len(names)]:
            started = time.perf_counter()
            for digest in digests:
                fetchers[name](digest)
            times[name].append(time.perf_counter() - started)
        print(f"round {i + 1}: " + "  ".join(
            f"{name} {megabytes / times[name][-1]:7.1f}" for name in names) + " MB/s", flush=True)
    print("| client | median MB/s | range MB/s |\n| --- | --- | --- |")
    for name in names:
        samples = times[name]
        print(f"| {name} | {megabytes / statistics.median(samples):.0f} | "
              f"{megabytes / max(samples):.0f}-{megabytes / min(samples):.0f} |")


def make_image(layers: int, layer_mb: int) -> build.Image:
    started = time.monotonic()
    image = build.build_image(
        [(build.random_layer(layer_mb * 1_000_000, f"data/layer{i}.bin"), "none")
         for i in range(layers)])
    print(f"built {layers} x {layer_mb} MB random layers (uncompressed tar) "
          f"in {time.monotonic() - started:.1f}s", flush=True)
    return image


def write_daemon_config(base: Path, registries_conf: Path, policy: Path) -> None:
    (base / "conf.d").mkdir(parents=True)
    (base / "podvisor.toml").write_text(
        f'[podvisor]\nroot = "{base}/root"\nrunroot = "{base}/run"\nlog_level = "info"\n'
        f'[podvisor.network]\nnetwork_dir = "{base}/cni"\n'
        "[podvisor.metrics]\nmetrics_port = 0\n"
        f'[podvisor.image]\nregistries_conf = "{registries_conf}"\n'
        f'signature_policy = "{policy}"\n')


def podvisor_round(daemon: Daemon, name: str, image_id: str) -> float:
    request = api.PullImageRequest(image=api.ImageSpec(image=name))
    started = time.perf_counter()
    ref = daemon.images.PullImage(request, timeout=PULL_DEADLINE).image_ref
    elapsed = time.perf_counter() - started
    if ref != image_id:
        raise SystemExit(f"podvisor pulled {ref}, expected {image_id}")
    daemon.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=image_id)),
                              timeout=60)
    # The next round must download every byte again.
    blobs = daemon.base / "root" / "image" / "blobs"
    left = [p.name for p in blobs.rglob("*") if p.is_file()] if blobs.exists() else []
    if daemon.images.ListImages(api.ListImagesRequest(), timeout=60).images or left:
        raise SystemExit(f"RemoveImage left an image or blobs behind: {left}")
    return elapsed


def skopeo_round(host: str, dest: Path, policy: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["skopeo", "--policy", str(policy), "copy", "--quiet",
                    "--src-tls-verify=false", f"docker://{host}/{REPO}:{TAG}", f"dir:{dest}"],
                   check=True)
    elapsed = time.perf_counter() - started
    shutil.rmtree(dest)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--transport-only", action="store_true",
                        help="only the registry client comparison, no daemon or skopeo")
    args = parser.parse_args()

    # Short: the daemon's runroot (base/d/run) may be at most 32 bytes.
    base = Path(tempfile.mkdtemp(prefix="pv-bp-"))
    registry = daemon = None
    try:
        image = make_image(args.layers, args.layer_mb)
        megabytes = (len(image.config.data) + sum(len(b.data) for b in image.layers)) / 1e6
        registry = start_registry(base / "registry")
        build.Pusher(registry.host).push_image(REPO, TAG, image)
        name = f"{registry.host}/{REPO}:{TAG}"
        transport_bench(registry.host, image, megabytes, args.rounds)
        if args.transport_only:
            return

        conf = base / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
        policy = base / "policy.json"
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        write_daemon_config(base / "d", conf, policy)
        daemon = Daemon(base / "d", dict(os.environ)).start()

        dest = base / "skopeo-dir"
        podvisor_round(daemon, name, image.id)  # warm-up, untimed
        skopeo_round(registry.host, dest, policy)
        times: dict[str, list[float]] = {"podvisor": [], "skopeo": []}
        print(f"image: {megabytes:.1f} MB in {len(image.layers)} layers + config; "
              f"{args.rounds} rounds", flush=True)
        for i in range(args.rounds):
            order = ("podvisor", "skopeo") if i % 2 == 0 else ("skopeo", "podvisor")
            for who in order:
                # Write back what the previous round left dirty (200 MB
                # written, then deleted), so no round pays for another's.
                os.sync()
                elapsed = (podvisor_round(daemon, name, image.id) if who == "podvisor"
                           else skopeo_round(registry.host, dest, policy))
                times[who].append(elapsed)
            print(f"round {i + 1}: podvisor {megabytes / times['podvisor'][-1]:7.1f} MB/s  "
                  f"skopeo {megabytes / times['skopeo'][-1]:7.1f} MB/s", flush=True)

        for who, samples in times.items():
            print(f"{who:>8}: median {statistics.median(samples):.2f}s = "
                  f"{megabytes / statistics.median(samples):.1f} MB/s "
                  f"(rounds from {megabytes / max(samples):.1f} "
                  f"to {megabytes / min(samples):.1f} MB/s)")
        pv = statistics.median(times["podvisor"])
        sk = statistics.median(times["skopeo"])
        print(f"podvisor/skopeo throughput ratio: {sk / pv:.2f}")
    finally:
        if daemon is not None:
            daemon.stop()
        if registry is not None:
            registry.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
