"""The systemd client against a real systemd (PID 1, cgroup v2): slices and
scopes appear where ``slices.expand`` says, and stopping a slice removes
its tree and the processes in it. Runs in the test VM; skipped elsewhere."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podvisor.proto.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition
from podvisor.workers.runtime.cgroup import slices, systemd

# Generous: the VM is emulated, and systemd answers 15-80x slower there.
TIMEOUT = 60.0
ROOT = Path("/sys/fs/cgroup")

if not systemd.running(timeout=TIMEOUT):
    pytest.skip("systemd is not running here", allow_module_level=True)


def deadline() -> float:
    return time.monotonic() + TIMEOUT


@pytest.fixture
def manager() -> Iterator[systemd.Systemd]:
    with systemd.Systemd(timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def top(manager: systemd.Systemd) -> Iterator[str]:
    """A fresh top-level slice name, stopped (with all below it) afterwards.
    No '-' in it: each would add a parent slice (``podvisor-test-1.slice``
    lives in ``podvisor.slice/podvisor-test.slice``) left behind by the stop."""
    name = f"podvisortest_{secrets.token_hex(4)}.slice"
    yield name
    manager.stop(name, deadline())


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "600"])
    yield child
    if child.poll() is None:
        child.kill()
    child.wait()


def cgroup_dirs(path: str) -> list[Path]:
    """Where cgroup ``path`` shows: one directory on v2; on v1 and hybrid,
    one in systemd's own hierarchy and one per controller it accounts."""
    rel = path.lstrip("/")
    if (ROOT / "cgroup.controllers").exists():
        return [ROOT / rel]
    return [ROOT / hierarchy / rel for hierarchy in ("systemd", "memory", "pids")]


def test_slice_scope_lifecycle(manager: systemd.Systemd, top: str,
                               sleeper: subprocess.Popen[bytes]) -> None:
    # A pod slice as the kubelet names it: its parent comes with it.
    pod = top.removesuffix(".slice") + "-pod1234_5678.slice"
    manager.start_slice(pod, deadline())
    assert slices.expand(pod) == f"/{top}/{pod}"
    assert manager.active(pod) and manager.active(top)
    # With accounting on, systemd makes the slice in every hierarchy it
    # accounts (v1) or enables those controllers down to it (v2).
    for directory in cgroup_dirs(slices.expand(pod)):
        assert directory.is_dir()
    controllers = cgroup_dirs(slices.expand(pod))[0] / "cgroup.controllers"
    if controllers.exists():
        assert {"memory", "pids", "io"} <= set(controllers.read_text().split())
    manager.start_slice(pod, deadline())  # already active: fine

    scope = slices.scope("podvisor-test", secrets.token_hex(4))
    manager.start_scope(scope, pod, [sleeper.pid], deadline())
    assert manager.active(scope)
    # /proc/<pid>/cgroup: "0::<path>" on v2, "N:name=systemd:<path>" on v1.
    placed = dict(line.split(":", 2)[1:] for line in
                  Path(f"/proc/{sleeper.pid}/cgroup").read_text().splitlines())
    expected = f"{slices.expand(pod)}/{scope}"
    assert expected in (placed.get(""), placed.get("name=systemd")), placed
    with pytest.raises(AlreadyExists):
        manager.start_scope(scope, pod, [sleeper.pid], deadline())

    manager.stop(top, deadline())
    assert sleeper.wait(timeout=TIMEOUT) == -signal.SIGTERM
    for directory in cgroup_dirs(f"/{top}"):
        assert not directory.exists()
    for unit in (scope, pod, top):
        assert manager.state(unit) in (None, "inactive")
        assert not manager.active(unit)


def test_absent_units(manager: systemd.Systemd, top: str) -> None:
    assert manager.state(top) is None
    assert not manager.active(top)
    manager.stop(top, deadline())  # nothing to stop: fine


def test_refusals(manager: systemd.Systemd, top: str) -> None:
    # A pid that does not exist: systemd refuses the unit outright.
    dead = subprocess.Popen(["true"])
    dead.wait()
    scope = slices.scope("podvisor-test", secrets.token_hex(4))
    with pytest.raises(FailedPrecondition, match="systemd refused to start"):
        manager.start_scope(scope, top, [dead.pid], deadline())
    assert not manager.active(scope)
    with pytest.raises(DeadlineExceeded):
        manager.start_slice(top, time.monotonic() - 1)
    assert manager.state(top) is None
