"""Slice names as the kubelet and runc read them, and the systemd client on
a host without systemd: it says so at once instead of waiting."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podvisor.proto.errors import FailedPrecondition, InvalidArgument
from podvisor.workers.runtime.cgroup import slices, systemd

EXPANDED = [
    ("-.slice", "/"),
    ("system.slice", "/system.slice"),
    ("kubepods.slice", "/kubepods.slice"),
    ("kubepods-besteffort.slice", "/kubepods.slice/kubepods-besteffort.slice"),
    # The kubelet's pod slice: the pod UID's dashes are written as "_".
    ("kubepods-burstable-pod1234_5678.slice",
     "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice"),
    ("test-a-b.slice", "/test.slice/test-a.slice/test-a-b.slice"),
    ("user-1000.slice", "/user.slice/user-1000.slice"),
    ("a.b-c:d\\x2d.slice", "/a.b.slice/a.b-c:d\\x2d.slice"),
]

INVALID = [
    "", ".slice", "slice", "system", "system.scope", "a.slice.d",
    "a--b.slice", "-a.slice", "a-.slice", "--.slice",
    "kubepods.slice/kubepods-burstable.slice", "/kubepods.slice", "a/b.slice",
    "a b.slice", "a\nb.slice", "pod\u00e9.slice", "a" * 250 + "-b.slice",
]


@pytest.mark.parametrize(("name", "path"), EXPANDED)
def test_expand_follows_runc(name: str, path: str) -> None:
    assert slices.expand(name) == path


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid slice name"):
        slices.expand(name)


def test_refusal_echoes_a_short_one_line_value() -> None:
    with pytest.raises(InvalidArgument) as caught:
        slices.expand("x\n" * 5000 + ".slice")
    assert "\n" not in caught.value.message
    assert len(caught.value.message) < 2048  # shorten(): 256 characters, escaped


@pytest.mark.parametrize(("name", "parent"), [
    ("-.slice", None),
    ("system.slice", "-.slice"),
    ("kubepods-burstable.slice", "kubepods.slice"),
    ("kubepods-burstable-pod1.slice", "kubepods-burstable.slice"),
])
def test_parent(name: str, parent: str | None) -> None:
    assert slices.parent(name) == parent


@pytest.mark.parametrize(("value", "expected"), [
    ("kubepods-burstable-pod1.slice", True),
    ("system.slice", True),
    ("-.slice", True),
    ("a--b.slice", True),  # a slice name, if an invalid one: expand says so
    ("/kubepods/burstable/pod1", False),
    ("/kubepods.slice/kubepods-burstable.slice", False),
    ("kubepods.slice/kubepods-burstable.slice", False),
    ("/podvisor", False),
    ("pod", False),
])
def test_is_slice_tells_names_from_paths(value: str, expected: bool) -> None:
    assert slices.is_slice(value) is expected


def test_scope_names() -> None:
    assert slices.scope("podvisor", "ab12") == "podvisor-ab12.scope"
    assert slices.scope("podvisor-conmon", "ab12") == "podvisor-conmon-ab12.scope"
    for prefix, object_id in (("", "ab"), ("podvisor", ""), ("a/b", "c"), ("p", "x y")):
        with pytest.raises(InvalidArgument, match="invalid scope name"):
            slices.scope(prefix, object_id)


needs_no_systemd = pytest.mark.skipif(
    Path(systemd.RUN_DIR).is_dir(), reason="this host runs systemd")


@needs_no_systemd
def test_running_is_false_without_systemd() -> None:
    started = time.monotonic()
    assert systemd.running() is False
    assert time.monotonic() - started < 1


@needs_no_systemd
def test_connecting_without_a_bus_fails_clearly(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/absent")
    with pytest.raises(FailedPrecondition, match="cannot reach systemd on the system bus"):
        systemd.Systemd(timeout=2)


@pytest.fixture
def silent_bus(tmp_path: Path) -> Iterator[str]:
    """A unix socket that accepts connections and never answers."""
    path = str(tmp_path / "bus")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        yield path


def test_a_bus_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch,
                                            silent_bus: str) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={silent_bus}")
    started = time.monotonic()
    with pytest.raises(FailedPrecondition, match="cannot reach systemd"):
        systemd.Systemd(timeout=0.5)
    assert time.monotonic() - started < 5


def test_scope_arguments_are_checked_before_any_call() -> None:
    # No connection is needed to refuse a bad name: the object is made
    # without __init__, so a call would fail on the missing connection.
    client = systemd.Systemd.__new__(systemd.Systemd)
    deadline = time.monotonic() + 1
    with pytest.raises(InvalidArgument, match="invalid slice name"):
        client.start_scope("x.scope", "a--b.slice", [1], deadline)
    with pytest.raises(InvalidArgument, match="invalid scope name"):
        client.start_scope("x.service", "system.slice", [1], deadline)
    with pytest.raises(InvalidArgument, match="invalid slice name"):
        client.start_slice("-bad.slice", deadline)
    client.start_slice("-.slice", deadline)  # the root always exists: nothing to do
