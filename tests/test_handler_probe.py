"""What a runtime handler is taken to support when it has no `features`
command: crun 1.8 applies "rro" (recursive read-only mounts), given a kernel
with mount_setattr(2)."""

from __future__ import annotations

import pytest

from podvisor.workers.runtime.handlers import _known_mount_options


@pytest.mark.parametrize(("version", "kernel", "expected"), [
    ("crun version 1.8.1", "6.1.0-13-amd64", {"rro"}),
    ("crun version 1.12", "5.12.0", {"rro"}),
    ("crun version 1.7.2", "6.1.0", set()),
    ("crun version 1.8.1", "5.10.0-26-amd64", set()),
    ("runc version 1.1.5+ds1", "6.1.0", set()),
    ("", "6.1.0", set()),
    ("crun version 1.8.1", "garbage", set()),
])
def test_known_mount_options(version: str, kernel: str, expected: set[str]) -> None:
    assert _known_mount_options(version, kernel) == expected
