"""The runtime pool's side of the podvisor-conmon contract.

conmon/contract.py is the specification (command line, state dir, exit
file, exec output). The rooms rule keeps conmon importable by nobody, so
the few names and formats used here are restated, and the tests run both
sides together.

Spawning: ``podvisor-conmon monitor`` is started with a sync pipe; it forks
a detached monitor and exits at once. We reap that first process here (the
monitor itself is adopted by the supervisor, a subreaper, or PID 1 if the
supervisor is gone), then read the one JSON sync line: the container's pid,
or the runtime's error. A dead or silent monitor before the deadline is an
error naming the container.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from ...proto.errors import DeadlineExceeded, Internal, NotFound

CONMON = "podvisor-conmon"
SPAWN_TIMEOUT = 10.0
CTL_TIMEOUT = 5.0


def conmon_binary() -> str:
    """The podvisor-conmon next to this interpreter (the venv), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), CONMON)
    return beside if os.access(beside, os.X_OK) else (shutil.which(CONMON) or CONMON)


@dataclass(frozen=True)
class Handler:
    """One OCI runtime handler from the config."""

    name: str
    path: str
    root: str

    @classmethod
    def from_settings(cls, settings: dict[str, Any], name: str) -> Handler:
        spec = settings["runtime"]["runtimes"][name]
        return cls(name, spec["runtime_path"], spec["runtime_root"])

    def run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.path, "--root", self.root, *args], capture_output=True,
                              text=True, timeout=timeout, check=False)


@dataclass(frozen=True)
class Started:
    pid: int
    conmon_pid: int


def spawn(handler: Handler, container_id: str, bundle: str, state_dir: str, exit_dir: str,
          log_path: str, *, terminal: bool, stdin: bool, stdin_once: bool,
          deadline: float) -> Started:
    """Start a monitor that runs ``<runtime> create``; wait for its sync line."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    argv = [conmon_binary(), "monitor", "--id", container_id, "--bundle", bundle,
            "--runtime", handler.path, "--runtime-root", handler.root,
            "--state-dir", state_dir, "--exit-dir", exit_dir, "--log-path", log_path,
            "--sync-fd", str(write_fd)]
    if terminal:
        argv.append("--terminal")
    if stdin:
        argv.append("--stdin")
        if stdin_once:
            argv.append("--stdin-once")
    try:
        os.set_inheritable(write_fd, True)
        proc = subprocess.Popen(argv, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(write_fd)
        write_fd = -1
        try:
            _, err = proc.communicate(timeout=SPAWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise Internal(f"podvisor-conmon for {container_id} did not start") from None
        if proc.returncode != 0:
            raise Internal(f"podvisor-conmon for {container_id} failed: "
                           f"{err.decode(errors='replace').strip()[:500]}")
        line = _read_line(read_fd, deadline, container_id)
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
    try:
        sync = json.loads(line)
    except ValueError:
        raise Internal(f"podvisor-conmon for {container_id} sent {line[:200]!r}") from None
    if "error" in sync:
        raise Internal(f"creating container {container_id}: {sync['error']}")
    return Started(int(sync["pid"]), int(sync["conmon_pid"]))


def _read_line(fd: int, deadline: float, container_id: str) -> str:
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"container {container_id} was not created before the "
                                   "deadline")
        ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise Internal(f"podvisor-conmon for {container_id} died before the container "
                           "was created; see its conmon.log")
        data += chunk
    return data.decode(errors="replace")


def read_exit(exit_dir: str, container_id: str) -> dict[str, Any] | None:
    """The exit file conmon wrote, or None while the container runs."""
    try:
        with open(os.path.join(exit_dir, container_id), encoding="utf-8") as f:
            record: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # conmon writes atomically; a torn file cannot be ours
    return record


def conmon_alive(state_dir: str) -> bool:
    """Is the monitor recorded in ``conmon.pid`` still running?"""
    try:
        with open(os.path.join(state_dir, "conmon.pid"), encoding="utf-8") as f:
            pid = int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except FileNotFoundError:
        return False
    # This container's monitor, not any process that reused the pid (another
    # container's monitor included): its argv names the container.
    container_id = os.path.basename(state_dir).encode()
    return any(CONMON.encode() in a for a in argv[:2]) and b"monitor" in argv \
        and container_id in argv


def process_alive(pid: int | None) -> bool:
    """Is ``pid`` a live process (not a zombie)?"""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def wait_exit(exit_dir: str, container_id: str, deadline: float) -> dict[str, Any] | None:
    """Poll for the exit file until ``deadline``; None if it never came."""
    delay = 0.005
    while True:
        record = read_exit(exit_dir, container_id)
        if record is not None or time.monotonic() >= deadline:
            return record
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def ctl(state_dir: str, command: str) -> None:
    """Send one command on the monitor's control socket and check its reply."""
    path = os.path.join(state_dir, "ctl")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CTL_TIMEOUT)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotFound("the container's monitor is not running") from None
        sock.sendall(command.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    text = reply.decode(errors="replace").strip()
    if text != "ok":
        raise Internal(f"{command.split()[0]} failed: {text or 'no reply'}")


def exec_sync(handler: Handler, container_id: str, cmd: list[str], timeout: float,
              deadline: float) -> dict[str, Any]:
    """Run ``cmd`` in the container through ``podvisor-conmon exec``."""
    argv = [conmon_binary(), "exec", "--id", container_id, "--runtime", handler.path,
            "--runtime-root", handler.root, "--timeout", str(timeout), "--", *cmd]
    # conmon enforces the command's timeout; ours only guards against conmon
    # itself hanging, and never outlives the caller.
    wait = max(1.0, deadline - time.monotonic())
    try:
        done = subprocess.run(argv, capture_output=True, timeout=wait, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeadlineExceeded(f"exec in container {container_id} ran past the deadline") \
            from None
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise Internal(f"exec in {container_id} failed: "
                       f"{done.stderr.decode(errors='replace').strip()[:500]}") from None
    return {
        "exit_code": int(result["exit_code"]),
        "stdout": base64.b64decode(result["stdout"]),
        "stderr": base64.b64decode(result["stderr"]),
        "timed_out": bool(result["timed_out"]),
        "runtime_error": result.get("runtime_error"),
    }


def kill_monitor(state_dir: str) -> None:
    """SIGKILL a monitor whose container is gone (a last resort in cleanup)."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        with open(os.path.join(state_dir, "conmon.pid"), encoding="utf-8") as f:
            pid = int(f.read().strip())
        if conmon_alive(state_dir):
            os.kill(pid, signal.SIGKILL)
