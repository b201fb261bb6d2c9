"""ruff and mypy --strict are part of the test suite, so CI runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ROOMS = ("supervisor", "proto", "workers", "conmon")


def test_ruff_is_clean() -> None:
    out = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", str(REPO)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.timeout(300)
def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    # mypy cannot follow setuptools' package-dir mapping through the editable
    # finder, so it reads a tree laid out as the installed package would be.
    root = tmp_path / "podvisor"
    root.mkdir()
    for room in ROOMS:
        (root / room).symlink_to(REPO / room)
    args = [str(BIN / "mypy"), "--config-file", str(REPO / "pyproject.toml"),
            "--cache-dir", str(tmp_path / "cache")]
    for room in ROOMS:
        args += ["-p", f"podvisor.{room}"]
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
