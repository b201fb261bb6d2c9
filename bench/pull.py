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
podvisor/skopeo ratio. Everything started here is stopped by its pid, and
the temp dir is removed.

    /tmp/pv/bin/python bench/pull.py [--layers 4] [--layer-mb 50] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The image builder, the registry runner and the daemon runner of the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import imagebuild as build
from daemonlib import Daemon
from registry import start_registry

from podvisor.proto import api_pb2 as api

REPO, TAG = "bench/random", "1"
PULL_DEADLINE = 600.0


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
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="pv-bench-pull-"))
    registry = daemon = None
    try:
        image = make_image(args.layers, args.layer_mb)
        megabytes = (len(image.config.data) + sum(len(b.data) for b in image.layers)) / 1e6
        registry = start_registry(base / "registry")
        build.Pusher(registry.host).push_image(REPO, TAG, image)
        name = f"{registry.host}/{REPO}:{TAG}"

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
