"""A container's status while its monitor exits: conmon writes the exit
file and then exits, so a read that finds no exit file and then no live
monitor or process must read the file again before it calls the exit
unknown (255). The race's order is forced here; on a loaded machine it
happens by itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from podvisor.workers.runtime import containers, monitor
from podvisor.workers.runtime.layout import Layout


def make_layout(tmp_path: Path) -> Layout:
    return Layout.from_settings({"root": str(tmp_path / "root"),
                                 "runroot": str(tmp_path / "run")})


def test_an_exit_file_written_as_the_monitor_exits_is_read(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    reads: list[str] = []

    def read_exit(exit_dir: str, container_id: str) -> dict[str, Any] | None:
        reads.append(container_id)
        # Absent at the first read; written by the time the monitor is gone.
        return None if len(reads) == 1 else {"exit_code": 0, "exited_at_ns": 5}

    monkeypatch.setattr(monitor, "read_exit", read_exit)
    monkeypatch.setattr(monitor, "conmon_alive", lambda state_dir: False)
    monkeypatch.setattr(monitor, "process_alive", lambda pid: False)
    record = {"id": "c" * 64, "state": containers.RUNNING, "pid": 12345}
    now = containers.current(layout, record)
    assert (now["state"], now["exit_code"], now["reason"]) == (containers.EXITED, 0, "Completed")
    assert len(reads) == 2


def test_with_no_exit_file_at_all_the_exit_is_unknown(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    monkeypatch.setattr(monitor, "read_exit", lambda exit_dir, container_id: None)
    monkeypatch.setattr(monitor, "conmon_alive", lambda state_dir: False)
    monkeypatch.setattr(monitor, "process_alive", lambda pid: False)
    now = containers.current(layout, {"id": "d" * 64, "state": containers.RUNNING, "pid": 1})
    assert (now["exit_code"], now["reason"]) == (255, "Unknown")
