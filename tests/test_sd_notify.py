"""systemd readiness: the daemon under a NOTIFY_SOCKET of the test's own
(a unix datagram socket, as systemd binds) sends READY=1 only once its CRI
socket answers, WATCHDOG=1 when a watchdog interval is set, and
STOPPING=1 when it stops; its workers never see the socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemonlib import Daemon

from podvisor.proto import api_pb2 as api
from podvisor.supervisor.sdnotify import Notifier

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    yield sock, path
    sock.close()


def messages(sock: socket.socket, until: str) -> list[str]:
    """Every state received up to and including the one naming ``until``."""
    seen: list[str] = []
    while not any(until in m for m in seen):
        seen.append(sock.recv(4096).decode())
    return seen


def test_ready_only_once_the_cri_socket_answers_then_watchdog_and_stopping(
        make_daemon: Callable[..., Daemon], listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    daemon = make_daemon(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}, start=False)
    daemon.start(wait_ready=False)
    [ready] = [m for m in messages(sock, "READY=1") if "READY=1" in m]
    # At the moment systemd hears it, the kubelet's first call is served.
    assert daemon.runtime.Version(api.VersionRequest(), timeout=5).runtime_name == "podvisor"
    assert "STATUS=serving CRI v1" in ready and f"MAINPID={daemon.pid}" in ready
    messages(sock, "WATCHDOG=1")
    for pid in daemon.worker_pids():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))]
    daemon.stop()
    assert any("STOPPING=1" in m for m in messages(sock, "STOPPING=1"))


def test_the_environment_is_read_once_and_taken_out() -> None:
    env = {"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "2000000",
           "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = Notifier(env)
    assert notifier.address == "\0abstract" and notifier.watchdog == 2.0
    assert env == {"PATH": "/bin"}
    # Another process's watchdog, or none at all: no keep-alives.
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5",
                     "WATCHDOG_PID": "1"}).watchdog is None
    quiet = Notifier({})
    assert quiet.address == "" and quiet.watchdog is None
    quiet.notify("READY=1")  # not under systemd: nothing to send to
