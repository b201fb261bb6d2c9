"""Monitors forked by the monitor zygote (conmon/zygote.py), through the CRI.

A fresh daemon has no zygote: its first monitor is exec'd while the runtime
worker starts one, and later ones are forked. A forked monitor is told
apart by its command line: its title is written over the zygote's argv
area, so /proc/<pid>/cmdline has exactly the zygote's size, while an
exec'd monitor's is its own, far longer argv (conmon/proctitle.py).

Each test runs on a node of its own and removes its pods; nothing here
kills a process it did not find by pid under its own daemon's run dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from daemonlib import poll_until
from podfixtures import Node, log_lines
from podfixtures import n as n

from podvisor.proto import api_pb2 as api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TITLE = b"podvisor-conmon-zygote "


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def zygote(n: Node) -> int | None:
    """The live zygote serving this daemon's runtime run dir."""
    title = TITLE + str(n.daemon.runroot / "runtime").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and cmdline(int(entry.name)).rstrip(b"\0") == title \
                and alive(int(entry.name)):
            return int(entry.name)
    return None


def monitor_of(n: Node, object_id: str) -> int:
    return int((n.daemon.runroot / "c" / object_id / "conmon.pid").read_text())


def forked(n: Node, pid: int) -> bool:
    zpid = zygote(n)
    return zpid is not None and len(cmdline(pid)) == len(cmdline(zpid))


def status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in lines)
            if k in ("SigBlk", "SigIgn", "SigCgt")}


def fd_kinds(pid: int) -> list[str]:
    """What the open fds are (pipe, socket, anon_inode:..., or a file), sorted:
    the numbers depend on the order of opening, not on what was inherited."""
    return sorted(target.split(":[")[0] if ":" in target else "file"
                  for target in (os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()))


def test_monitors_are_forked_and_behave_as_exec_d_ones(n: Node) -> None:
    pod = n.pod_config("forked")
    pod_id = n.run_pod(pod)
    try:
        # The pod's infra monitor was the daemon's first: exec'd.
        infra = monitor_of(n, pod_id)
        poll_until(lambda: zygote(n), 30, what="the monitor zygote")
        assert not forked(n, infra)
        sleeper = n.run(pod_id, pod, n.container_config("sleeper", "sleep 3600"))
        n.wait_state(sleeper, api.CONTAINER_RUNNING)
        monitor = monitor_of(n, sleeper)
        assert forked(n, monitor)
        # Nothing of the zygote's state: the signal dispositions, fds and
        # cwd of an exec'd monitor (the infra's is one, with the same
        # kind of stdio).
        assert status_fields(monitor) == status_fields(infra)
        assert fd_kinds(monitor) == fd_kinds(infra), (fd_kinds(monitor), fd_kinds(infra))
        assert os.readlink(f"/proc/{monitor}/cwd") == os.readlink(f"/proc/{infra}/cwd")
        # Not the zygote's child: detached, in a session of its own.
        assert os.getsid(monitor) == monitor
        assert Path(f"/proc/{monitor}/stat").read_text().rsplit(")", 1)[1].split()[1] \
            != str(zygote(n))
        assert n.exec(sleeper, "echo", "hi").stdout == b"hi\n"
        # Logs and exit codes as before.
        quitter = n.create(pod_id, pod, n.container_config(
            "quitter", "echo out; echo err >&2; exit 3"))
        assert forked(n, monitor_of(n, quitter))  # before it can exit
        n.start(quitter)
        assert n.wait_state(quitter, api.CONTAINER_EXITED).exit_code == 3
        lines = log_lines(Path(pod.log_directory) / "quitter.log")
        assert ("stdout", "F", "out") in lines and ("stderr", "F", "err") in lines
    finally:
        n.remove_pod(pod_id)


def test_kill_9_of_the_zygote_loses_no_container(n: Node) -> None:
    pod = n.pod_config("zkill")
    pod_id = n.run_pod(pod)
    try:
        first = poll_until(lambda: zygote(n), 30, what="the monitor zygote")
        ticker = n.run(pod_id, pod, n.container_config(
            "ticker", "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done"))
        n.wait_state(ticker, api.CONTAINER_RUNNING)
        monitor = monitor_of(n, ticker)
        assert forked(n, monitor)
        os.kill(first, signal.SIGKILL)
        poll_until(lambda: not alive(first), 10, what="the zygote gone")
        assert alive(monitor)
        log = Path(pod.log_directory) / "ticker.log"
        count = len(log_lines(log))
        poll_until(lambda: len(log_lines(log)) > count + 3, 10, what="ticks after the kill")
        # The next start works (exec'd, or by a new zygote), and a new
        # zygote forks the ones after.
        after = n.run(pod_id, pod, n.container_config("after", "sleep 3600"))
        n.wait_state(after, api.CONTAINER_RUNNING)
        second = poll_until(lambda: zygote(n), 30, what="a new monitor zygote")
        assert second != first
        later = n.run(pod_id, pod, n.container_config("later", "sleep 3600"))
        n.wait_state(later, api.CONTAINER_RUNNING)
        assert forked(n, monitor_of(n, later))
        # The zygote goes with the worker that started it; no monitor does.
        worker = int(Path(f"/proc/{second}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert worker in {w["pid"] for w in n.daemon.workers().values()}
        os.kill(worker, signal.SIGKILL)
        poll_until(lambda: not alive(second), 10, what="the zygote gone with its worker")
        assert all(alive(monitor_of(n, c)) for c in (ticker, after, later))
        n.daemon.runtime.StopContainer(api.StopContainerRequest(container_id=ticker, timeout=0),
                                       timeout=30)
        assert n.status(ticker).exit_code == 137
    finally:
        n.remove_pod(pod_id)


def test_the_zygote_refuses_bad_requests_and_reports_bad_arguments() -> None:
    # Short: the socket path must fit in sun_path.
    run_dir = Path(tempfile.mkdtemp(prefix="pvz-"))
    bootstrap = Path(__file__).resolve().parent.parent / "conmon" / "bootstrap.py"
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(bootstrap), "zygote", str(run_dir)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        path = run_dir / "monitor-zygote.sock"

        def ask(request: bytes) -> tuple[dict[str, object], bytes]:
            err_r, err_w = os.pipe()
            sync_r, sync_w = os.pipe()
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                    sock.settimeout(30)
                    sock.connect(str(path))
                    socket.send_fds(sock, [request], [err_w, sync_w])
                    os.close(err_w)
                    answer = json.loads(sock.recv(4096))
                return answer, os.read(err_r, 4096) if "status" in answer else b""
            finally:
                for fd in (err_r, sync_r, sync_w):
                    os.close(fd)
                with contextlib.suppress(OSError):
                    os.close(err_w)

        poll_until(path.exists, 30, what="the zygote's socket")
        answer, _ = ask(b"not json")
        assert "error" in answer
        answer, _ = ask(json.dumps({"version": 1, "args": ["exec", "--id", "x"], "env": {},
                                    "cwd": "/"}).encode())
        assert "error" in answer
        # Arguments are checked as an exec'd monitor checks them: status 2
        # and argparse's message on the request's stderr.
        answer, err = ask(json.dumps({"version": 1, "args": ["monitor", "--id", "x"],
                                      "env": {}, "cwd": "/"}).encode())
        assert answer == {"status": 2}
        assert b"the following arguments are required" in err
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        shutil.rmtree(run_dir)


def test_a_zygote_whose_starter_is_already_gone_exits() -> None:
    # The shell that starts it exits at once, before the zygote can watch
    # it: left to PID 1, it must not serve (and live) forever.
    run_dir = Path(tempfile.mkdtemp(prefix="pvz-"))
    bootstrap = Path(__file__).resolve().parent.parent / "conmon" / "bootstrap.py"
    started = subprocess.run(
        ["sh", "-c", '"$@" </dev/null >/dev/null 2>&1 & echo $!', "sh",
         sys.executable, "-I", "-S", str(bootstrap), "zygote", str(run_dir)],
        capture_output=True, text=True, check=True, timeout=30)
    pid = int(started.stdout)
    try:
        poll_until(lambda: not alive(pid), 30, what="orphaned zygote gone")
        assert not (run_dir / "monitor-zygote.sock").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)
