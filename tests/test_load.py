"""Parallel pod starts on a loaded node, driven by crictl as a load tester
would: every chain (runp, create, start) must succeed. Internal waits
follow the caller's deadline, so a slow node makes calls slower, never
failed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from podfixtures import Node, node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PODS = 50
REPS = 3


@pytest.fixture(scope="module")
def n() -> Iterator[Node]:
    with node() as here:
        yield here


@pytest.fixture
def cpu_hogs() -> Iterator[None]:
    """One busy process per core, for the length of the test."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def crictl(n: Node, *args: str) -> str:
    binary = shutil.which("crictl")
    assert binary, "crictl is not on PATH: contrib/install.sh installs it from the conformance kit"
    endpoint = f"unix://{n.daemon.socket}"
    done = subprocess.run([binary, "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
                           "--timeout", "120s", *args],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"crictl {args[0]}: {done.stderr.strip()[-500:]}"
    return done.stdout.strip()


def chain(n: Node, work: Path, rep: int, index: int) -> str:
    uid = uuid.uuid4().hex
    pod = work / f"pod-{rep}-{index}.json"
    pod.write_text(json.dumps({
        "metadata": {"name": f"load-{rep}-{index}", "namespace": "load", "uid": uid},
        "log_directory": str(work / "logs" / uid),
        "linux": {"cgroup_parent": f"/podvisor-test/pod{uid}"}}))
    container = work / "container.json"
    pod_id = crictl(n, "runp", str(pod))
    container_id = crictl(n, "create", pod_id, str(container), str(pod))
    crictl(n, "start", container_id)
    return pod_id


def test_fifty_parallel_pod_starts_on_a_loaded_node_all_succeed(
        n: Node, cpu_hogs: None, tmp_path: Path) -> None:
    (tmp_path / "container.json").write_text(json.dumps({
        "metadata": {"name": "sleeper"}, "image": {"image": n.image},
        "command": ["sleep", "3600"], "log_path": "sleeper.log"}))
    for rep in range(REPS):
        with ThreadPoolExecutor(PODS) as pool:
            futures = [pool.submit(chain, n, tmp_path, rep, i) for i in range(PODS)]
            errors = [str(f.exception()) for f in futures if f.exception() is not None]
        assert errors == [], f"repetition {rep}: {len(errors)} chains failed: {errors[:3]}"
        running = crictl(n, "ps", "-q", "--state", "running", "--name", "^sleeper$").split()
        assert len(running) == PODS
        pods = crictl(n, "pods", "-q", "--namespace", "load").split()
        crictl(n, "stopp", *pods)
        crictl(n, "rmp", *pods)
        assert crictl(n, "pods", "-q", "--namespace", "load") == ""
