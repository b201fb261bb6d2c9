"""workers/memprobe.py: off unless asked; asked, SIGUSR2 writes a heap dump
that bench/worker_heap.py reads."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from podvisor.workers import memprobe

ROOT = Path(__file__).resolve().parent.parent


def probe_twice(where: Path) -> None:
    async def main() -> None:
        memprobe.install(asyncio.get_running_loop(), "test")
        for n in range(2):
            os.kill(os.getpid(), signal.SIGUSR2)
            while not (where / f"test-{os.getpid()}-{n}.json").exists():
                await asyncio.sleep(0.01)
    asyncio.run(main())


async def _install_only() -> None:
    memprobe.install(asyncio.get_running_loop(), "test")


def test_unset_it_traces_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memprobe.ENV, raising=False)
    assert not tracemalloc.is_tracing()
    asyncio.run(_install_only())
    assert not tracemalloc.is_tracing()


@pytest.mark.timeout(60)
def test_set_each_sigusr2_writes_a_dump_the_bench_diffs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(memprobe.ENV, str(tmp_path))
    try:
        probe_twice(tmp_path)
    finally:
        tracemalloc.stop()
    stem = tmp_path / f"test-{os.getpid()}"
    meta = json.loads(Path(f"{stem}-1.json").read_text())
    assert "MainThread" in meta["threads"] and meta["types"]
    diff = subprocess.run([sys.executable, str(ROOT / "bench" / "worker_heap.py"),
                           f"{stem}-0", f"{stem}-1"], capture_output=True, text=True,
                          check=True, timeout=60)
    assert "== top 25 sites by growth" in diff.stdout
