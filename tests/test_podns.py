"""Pod IPC/UTS namespaces pinned from a thread (workers/runtime/podns.py):
the pins hold new namespaces with the pod's hostname, the worker's own
threads stay where they were, and unpinning leaves nothing."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from podvisor.workers.runtime import podns


def _ns(kind: str) -> str:
    return os.readlink(f"/proc/self/ns/{kind}")


def _inside(paths: dict[str, str], script: str) -> str:
    args = [f"--{kind}={path}" for kind, path in paths.items()]
    return subprocess.run(["nsenter", *args, "sh", "-c", script], capture_output=True,
                          text=True, check=True, timeout=30).stdout


def test_pinned_namespaces_are_new_and_named_while_the_caller_stays(tmp_path: Path) -> None:
    release = threading.Event()
    others = [threading.Thread(target=release.wait) for _ in range(3)]
    for thread in others:
        thread.start()
    own = (_ns("ipc"), _ns("uts"), os.uname().nodename)
    try:
        paths = podns.pin(str(tmp_path / "ns"), "web-0", ipc=True, uts=True)
        assert set(paths) == {"ipc", "uts"}
        hostname, ipc, uts = _inside(
            paths, "hostname; readlink /proc/self/ns/ipc /proc/self/ns/uts").split()
        assert hostname == "web-0"
        assert ipc != own[0] and uts != own[1]
        assert (_ns("ipc"), _ns("uts"), os.uname().nodename) == own
    finally:
        release.set()
        for thread in others:
            thread.join()
        podns.unpin(str(tmp_path / "ns"))
    assert not (tmp_path / "ns").exists()


def test_only_what_is_asked_is_pinned(tmp_path: Path) -> None:
    paths = podns.pin(str(tmp_path / "ns"), "ignored", ipc=True, uts=False)
    try:
        assert list(paths) == ["ipc"]
        assert _inside(paths, "hostname").strip() == os.uname().nodename
    finally:
        podns.unpin(str(tmp_path / "ns"))
    assert podns.pin(str(tmp_path / "none"), "x", ipc=False, uts=False) == {}
    assert not (tmp_path / "ns").exists()
