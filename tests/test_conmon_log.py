"""The CRI log writer on its own: where lines are cut, and reopening."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from podvisor.conmon.crilog import CriLog, timestamp

RECORD = re.compile(rb"^(\S+) (stdout|stderr) ([PF]) (.*)$")


def records(path: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        match = RECORD.match(line)
        assert match, line
        out.append((match[2].decode(), match[3].decode(), match[4]))
    return out


def test_lines_are_cut_at_their_own_newlines_across_writes(tmp_path: Path) -> None:
    log = CriLog(str(tmp_path / "log"), line_max=8)
    log.write("stdout", b"ab")
    log.write("stderr", b"err\r\n")
    log.write("stdout", b"cd\n\nefgh")
    log.write("stdout", b"ijklmnopq\n")
    log.write("stdout", b"12345678\ntail")
    log.flush_partial()
    log.close()
    assert records(tmp_path / "log") == [
        ("stderr", "F", b"err"),
        ("stdout", "F", b"abcd"),
        ("stdout", "F", b""),
        ("stdout", "P", b"efghijkl"),
        ("stdout", "F", b"mnopq"),
        ("stdout", "F", b"12345678"),  # exactly line_max: one record
        ("stdout", "P", b"tail"),
    ]


def test_reopen_follows_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = CriLog(str(path))
    log.write("stdout", b"one\n")
    path.rename(tmp_path / "log.1")
    log.write("stdout", b"two\n")
    log.reopen()
    log.write("stdout", b"three\n")
    log.close()
    assert [r[2] for r in records(tmp_path / "log.1")] == [b"one", b"two"]
    assert [r[2] for r in records(path)] == [b"three"]


def test_failed_reopen_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "log"
    path.parent.mkdir()
    log = CriLog(str(path))
    path.rename(tmp_path / "log.1")
    path.parent.rmdir()
    with pytest.raises(FileNotFoundError):
        log.reopen()
    log.write("stdout", b"kept\n")
    log.close()
    assert [r[2] for r in records(tmp_path / "log.1")] == [b"kept"]


def test_timestamp_is_rfc3339_nano_utc() -> None:
    assert timestamp(1_700_000_000_000_000_007) == b"2023-11-14T22:13:20.000000007Z"
