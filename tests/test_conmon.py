"""podvisor-conmon monitor, end to end on real runc and crun.

Every test builds a busybox bundle (bundle.py), spawns conmon through its
command line as the runtime worker will, starts the container with the
runtime's ``start`` and checks what conmon leaves on disk and serves on its
sockets. Teardown deletes the container (``delete -f``) and its cgroups and
watches conmon's pid until it is gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bundle import (
    CONMON,
    Container,
    Runtime,
    SpawnError,
    comm,
    process_alive,
    runtime_or_skip,
    short_tmpdir,
    spawn,
)
from daemonlib import poll_until

pytestmark = pytest.mark.timeout(120)

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
TESTS = Path(__file__).resolve().parent


@pytest.fixture(params=["runc", "crun"])
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    runtime = runtime_or_skip(request.param)
    yield runtime
    shutil.rmtree(runtime.root.parent)


@pytest.fixture
def new_container(runtime: Runtime) -> Iterator[Callable[[], Container]]:
    made: list[Container] = []

    def make() -> Container:
        container = Container(runtime, short_tmpdir())
        made.append(container)
        return container

    yield make
    for container in made:
        try:
            container.cleanup()
        finally:
            shutil.rmtree(container.base)


def wait_for_log(container: Container, text: str, path: Path | None = None) -> None:
    poll_until(lambda: any(t == text for _, t in container.log_texts(path)), 20,
               what=f"{text!r} in the log")


def test_logs_both_streams_in_cri_format_and_exit_code(
        new_container: Callable[[], Container]) -> None:
    c = new_container()
    c.make_bundle(["sh", "-c", "echo out1; echo err1 >&2; yes x | head -n 20000 | tr -d '\\n';"
                   " echo; printf 'no newline'; exit 3"])
    before = time.time_ns()
    c.spawn()
    assert (c.state_dir / "attach").exists() and (c.state_dir / "ctl").exists()
    assert c.ctl("resize 10 10") == "error not a terminal"
    c.start()
    record = c.exit_record()
    assert record["exit_code"] == 3
    assert record["oom_killed"] is False
    assert record["pid"] == c.pid and record["id"] == c.id
    assert before < record["exited_at_ns"] <= time.time_ns()
    records = c.log_records()
    assert all(TIMESTAMP.match(stamp) for stamp, _, _, _ in records)
    assert [(tag, text) for _, stream, tag, text in records if stream == "stderr"] == [
        ("F", "err1")]
    assert [(tag, text) for _, stream, tag, text in records if stream == "stdout"] == [
        ("F", "out1"), ("P", "x" * 16384), ("F", "x" * (20000 - 16384)), ("P", "no newline")]
    # The exit file came last: sockets are gone and conmon goes too.
    poll_until(lambda: not c.conmon_alive(), 15, what="conmon exit")
    assert not (c.state_dir / "attach").exists()


def test_sigkill_gives_137_and_conmon_names_itself(
        new_container: Callable[[], Container]) -> None:
    c = new_container()
    c.make_bundle(["sleep", "1000"])
    c.spawn()
    c.start()
    assert comm(c.conmon_pid) == "podvisor-conmon"
    cmdline = Path(f"/proc/{c.conmon_pid}/cmdline").read_bytes()
    assert cmdline.startswith(f"podvisor-conmon {c.id}".encode())
    assert c.runtime.state(c.id)["status"] == "running"  # type: ignore[index]
    c.runtime.run("kill", c.id, "KILL")
    record = c.exit_record()
    assert record["exit_code"] == 137
    assert record["oom_killed"] is False


def test_tty_output_is_stdout_and_resize_reaches_the_container(
        new_container: Callable[[], Container]) -> None:
    c = new_container()
    c.make_bundle(["sh", "-c", "echo to-out; echo to-err >&2; echo ready; "
                   "while [ \"$(stty size 2>/dev/null)\" != '33 101' ]; do sleep 0.05; done; "
                   "echo \"size $(stty size)\""], terminal=True)
    c.spawn("--terminal")
    c.start()
    wait_for_log(c, "ready")
    assert c.ctl("resize 33 101") == "ok"
    assert c.exit_record()["exit_code"] == 0
    records = c.log_records()
    assert {stream for _, stream, _, _ in records} == {"stdout"}
    assert [t for _, t in c.log_texts()] == ["to-out", "to-err", "ready", "size 33 101"]


def test_reopen_after_rename_writes_the_new_file(new_container: Callable[[], Container]) -> None:
    c = new_container()
    c.make_bundle(["sh", "-c", "echo first; while [ ! -e /tmp/go1 ]; do sleep 0.05; done; "
                   "echo second; while [ ! -e /tmp/go2 ]; do sleep 0.05; done; echo third"])
    c.spawn()
    c.start()
    tmp = c.bundle / "rootfs" / "tmp"
    wait_for_log(c, "first")
    first = c.log_path.with_name("ctr.log.1")
    c.log_path.rename(first)
    assert c.ctl("reopen") == "ok"
    assert c.log_path.exists()  # acknowledged means reopened
    (tmp / "go1").touch()
    wait_for_log(c, "second")
    second = c.log_path.with_name("ctr.log.2")
    c.log_path.rename(second)
    os.kill(c.conmon_pid, signal.SIGUSR1)
    poll_until(c.log_path.exists, 10, what="log reopened on SIGUSR1")
    (tmp / "go2").touch()
    assert c.exit_record()["exit_code"] == 0
    assert c.log_texts(first) == [("stdout", "first")]
    assert c.log_texts(second) == [("stdout", "second")]
    assert c.log_texts() == [("stdout", "third")]


def read_packets(sock: socket.socket, until: Callable[[list[tuple[int, bytes]]], bool],
                 got: list[tuple[int, bytes]]) -> None:
    """Receive attach packets into ``got`` until ``until(got)``; b"" is EOF."""
    deadline = time.monotonic() + 20
    while not until(got):
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        packet = sock.recv(65536)
        got.append((packet[0], packet[1:]) if packet else (0, b""))


def joined(got: list[tuple[int, bytes]], stream: int) -> bytes:
    return b"".join(data for s, data in got if s == stream)


def test_attach_streams_output_and_forwards_stdin(
        new_container: Callable[[], Container]) -> None:
    c = new_container()
    c.make_bundle(["sh", "-c", "echo hello; read line; echo \"got $line\"; echo bye >&2; "
                   "read rest; echo \"eof $?\""])
    c.spawn("--stdin", "--stdin-once")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client, \
            socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as watcher:
        client.connect(str(c.state_dir / "attach"))
        watcher.connect(str(c.state_dir / "attach"))
        c.start()
        got: list[tuple[int, bytes]] = []
        read_packets(client, lambda g: b"hello\n" in joined(g, 1), got)
        client.sendall(b"abc\n")
        read_packets(client, lambda g: b"got abc\n" in joined(g, 1)
                     and b"bye\n" in joined(g, 2), got)
        # End of this session's stdin closes the container's (stdin_once).
        client.shutdown(socket.SHUT_WR)
        read_packets(client, lambda g: g[-1] == (0, b""), got)
        assert (c.exit_dir / c.id).exists()  # EOF comes after the exit file
        assert joined(got, 1) == b"hello\ngot abc\neof 1\n"
        assert joined(got, 2) == b"bye\n"
        seen: list[tuple[int, bytes]] = []
        read_packets(watcher, lambda g: bool(g) and g[-1] == (0, b""), seen)
        assert joined(seen, 1) == joined(got, 1)
    assert c.exit_record()["exit_code"] == 0
    assert c.log_texts() == [("stdout", "hello"), ("stdout", "got abc"), ("stderr", "bye"),
                             ("stdout", "eof 1")]


SPAWNER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from bundle import spawn
print(json.dumps(spawn(json.loads(sys.argv[2]))), flush=True)
sys.stdin.read()
"""


def test_outlives_a_killed_spawner(new_container: Callable[[], Container]) -> None:
    c = new_container()
    c.make_bundle(["sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 7"])
    spawner = subprocess.Popen([sys.executable, "-c", SPAWNER, str(TESTS),
                                json.dumps(c.monitor_argv())],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert spawner.stdout is not None
        message = json.loads(spawner.stdout.readline())
    finally:
        spawner.kill()
        spawner.wait()
        assert spawner.stdin is not None and spawner.stdout is not None
        spawner.stdin.close()
        spawner.stdout.close()
    c.pid, c.conmon_pid = message["pid"], message["conmon_pid"]
    stat = Path(f"/proc/{c.conmon_pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[1]) != spawner.pid  # reparented away
    assert int(stat[3]) == c.conmon_pid  # a session of its own
    assert c.conmon_alive()
    c.start()
    assert c.runtime.state(c.id)["status"] == "running"  # type: ignore[index]
    (c.bundle / "rootfs" / "tmp" / "go").touch()
    assert c.exit_record()["exit_code"] == 7


def test_exit_is_recorded_while_an_orphan_holds_stdout(
        new_container: Callable[[], Container]) -> None:
    # Without a PID namespace of its own the init's death kills nothing else:
    # the orphaned sleep keeps stdout open and is adopted by conmon.
    c = new_container()
    c.make_bundle(["sh", "-c", "sleep 60 & echo started; exit 4"], pid_namespace=False)
    c.spawn()
    c.start()
    started = time.monotonic()
    assert c.exit_record()["exit_code"] == 4
    assert time.monotonic() - started < 10
    assert c.log_texts() == [("stdout", "started")]
    assert c.conmon_alive()  # still the orphan's reaper, until delete kills it


def test_oom_kill_is_recorded(new_container: Callable[[], Container]) -> None:
    c = new_container()
    c.make_bundle(["sh", "-c", "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done"],
                  memory_limit=8 * 1024 * 1024)
    c.spawn()
    c.start()
    record = c.exit_record(timeout=60)
    assert record["exit_code"] == 137
    assert record["oom_killed"] is True


@pytest.mark.parametrize("terminal", [False, True], ids=["pipes", "tty"])
def test_create_failure_reaches_the_spawner(new_container: Callable[[], Container],
                                            terminal: bool) -> None:
    c = new_container()
    c.make_bundle(["/nonexistent"], terminal=terminal)
    with pytest.raises(SpawnError, match=rf"{c.runtime.name} create failed: .*/nonexistent"):
        c.spawn(*(["--terminal"] if terminal else []))
    poll_until(lambda: not conmons_of(c.id), 15, what="conmon exit after a failed create")
    assert not (c.exit_dir / c.id).exists()
    assert sorted(p.name for p in c.state_dir.iterdir()) == ["conmon.log", "runtime.log"]
    assert c.runtime.state(c.id) is None


def test_a_taken_id_fails_and_leaves_its_holder_alone(
        new_container: Callable[[], Container]) -> None:
    c = new_container()
    c.make_bundle(["sleep", "1000"])
    c.spawn()
    twin = Container(c.runtime, c.base / "twin", id=c.id)
    twin.base.mkdir()
    twin.make_bundle(["sleep", "1000"])
    with pytest.raises(SpawnError, match="create failed"):
        twin.spawn()
    c.start()
    assert c.runtime.state(c.id)["status"] == "running"  # type: ignore[index]


def test_unwritable_log_path_is_reported(new_container: Callable[[], Container]) -> None:
    c = new_container()
    c.make_bundle(["true"])
    argv = c.monitor_argv()
    argv[argv.index("--log-path") + 1] = str(c.base / "missing" / "ctr.log")
    with pytest.raises(SpawnError, match=r"cannot prepare .*No such file"):
        spawn(argv)
    assert c.runtime.state(c.id) is None


def conmons_of(cid: str) -> list[int]:
    """Live processes titled for container ``cid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(f"podvisor-conmon {cid}".encode()) and \
                    process_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_bad_command_line_fails_before_detaching(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match=r"(?s)exited 2 .*required: --bundle"):
        spawn(["monitor", "--id", "x", "--runtime", "/usr/sbin/runc", "--runtime-root",
               str(tmp_path)])
    out = subprocess.run([CONMON, "monitor", "--help"], capture_output=True, text=True,
                         check=True)
    assert "--sync-fd" in out.stdout
