"""``podvisor-conmon exec``: run one command in a container, with a deadline.

The runtime worker runs this as its own child and waits for the JSON on
stdout (contract.py); nothing is detached, nothing stays after it returns.

How the command is run and waited for
    conmon is a child subreaper and runs ``<runtime> exec --detach
    --pid-file``: the runtime starts the process with conmon's pipes as its
    stdio and exits, so the process is reparented to conmon, which waits for
    that pid itself (CRI-O's conmon does the same). The exit status is the
    process's own, and no runtime sits between the process and its output.

Killing at the deadline
    A runtime still running at the deadline gets ``RUNTIME_SETTLE`` more to
    finish, so the pid file names the process before anything is killed.
    The runtime runs in a new session, and runc and crun give the exec'd
    process a process group of its own, which its background children
    share unless they call setsid themselves. At the deadline conmon
    SIGKILLs those groups and the process, then every child it still has.
    An orphaned background child inside the container's PID namespace is
    the container init's to reap, never ours: the kernel does not reparent
    across a PID namespace to a subreaper outside it.

Output
    Both pipes are read while the command runs; when it exits, what is
    already written is drained without waiting for EOF, so a background
    child holding the pipes never holds the call. Bytes past ``output_max``
    are read and dropped, so the writer never blocks on a full pipe.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from .contract import EXEC_OUTPUT_MAX, VERSION
from .proctitle import set_title
from .reap import become_subreaper, exit_code, kill_all
from .runtime import Runtime

READ_MAX = 64 * 1024
# Reported when the process's status is lost: no pid file, or reaped by
# someone else (neither is expected).
UNKNOWN_EXIT = -1
# How long past the deadline a runtime still starting the exec may take to
# write the process's pid file; well within the worker's EXEC_GRACE.
RUNTIME_SETTLE = 2.0


@dataclass(frozen=True)
class ExecOptions:
    cid: str
    runtime: str
    runtime_root: str
    systemd_cgroup: bool
    timeout: float
    output_max: int = EXEC_OUTPUT_MAX
    process: str | None = None
    args: tuple[str, ...] = ()


class _Capture:
    """One output stream, capped."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self.truncated = False
        self._limit = limit
        os.set_blocking(fd, False)

    def read(self) -> int | None:
        """Read what is there: bytes read, 0 at EOF, None if none yet."""
        try:
            chunk = os.read(self.fd, READ_MAX)
        except BlockingIOError:
            return None
        room = self._limit - len(self.data)
        self.data += chunk[:max(room, 0)]
        self.truncated = self.truncated or len(chunk) > room
        return len(chunk)

    def drain(self) -> None:
        """What is written already; never waits for EOF."""
        with contextlib.suppress(OSError):
            while self.read():
                pass


def run(opts: ExecOptions) -> int:
    set_title(f"podvisor-conmon exec {opts.cid}")
    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="podvisor-exec-") as tmp:
        runtime = Runtime(opts.runtime, opts.runtime_root, os.path.join(tmp, "runtime.log"),
                          opts.systemd_cgroup)
        result = _execute(opts, runtime, os.path.join(tmp, "exec.pid"))
        result["runtime_error"] = runtime.errors() or None
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _execute(opts: ExecOptions, runtime: Runtime, pid_file: str) -> dict[str, object]:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    argv = runtime.exec(opts.cid, pid_file, opts.process, list(opts.args))
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                                start_new_session=True)
    finally:
        os.close(out_w)
        os.close(err_w)
    outputs = {"stdout": _Capture(out_r, opts.output_max),
               "stderr": _Capture(err_r, opts.output_max)}
    captures = list(outputs.values())
    deadline = time.monotonic() + opts.timeout if opts.timeout > 0 else None
    # The deadline covers the runtime starting the process, then the process.
    code: int | None = None  # None: the deadline came first
    if _wait_exit(proc.pid, captures, deadline):
        returncode = proc.wait()
        if returncode == 0:
            code = _wait_process(proc.pid, pid_file, captures, deadline)
        else:
            code = _cri_code(returncode)  # the runtime failed: runtime_error says why
    else:
        # A runtime still starting the process may have it running already
        # with no pid file yet: killed now, it would leave the process
        # behind, adopted by the container's init. Let it finish first.
        _wait_exit(proc.pid, captures, time.monotonic() + RUNTIME_SETTLE)
        _kill_groups(proc.pid, pid_file)
        proc.wait()
    for capture in captures:
        capture.drain()
        os.close(capture.fd)
    # Leave nothing: whatever the runtime left is our child as subreaper.
    kill_all()
    result: dict[str, object] = {
        "version": VERSION,
        "exit_code": 128 + signal.SIGKILL if code is None else code,
        "timed_out": code is None,
    }
    for name, capture in outputs.items():
        result[name] = base64.b64encode(capture.data).decode()
        result[f"{name}_truncated"] = capture.truncated
    return result


def _wait_process(runtime_pid: int, pid_file: str, captures: list[_Capture],
                  deadline: float | None) -> int | None:
    """The exec'd process's exit code, or None if it hit the deadline."""
    try:
        with open(pid_file, encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return UNKNOWN_EXIT
    timed_out = not _wait_exit(pid, captures, deadline)
    if timed_out:
        _kill_groups(runtime_pid, pid_file)
    try:
        status = os.waitpid(pid, 0)[1]
    except ChildProcessError:
        status = None
    if timed_out:
        return None
    return UNKNOWN_EXIT if status is None else exit_code(status)


def _wait_exit(pid: int, captures: list[_Capture], deadline: float | None) -> bool:
    """Read output until ``pid`` exits (True) or the deadline (False)."""
    pidfd = os.pidfd_open(pid)
    with selectors.DefaultSelector() as selector:
        selector.register(pidfd, selectors.EVENT_READ, None)
        for capture in captures:
            with contextlib.suppress(ValueError, OSError):  # closed at EOF before
                selector.register(capture.fd, selectors.EVENT_READ, capture)
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                for key, _ in selector.select(left):
                    if key.data is None:
                        return True
                    if key.data.read() == 0:
                        selector.unregister(key.fd)
        finally:
            os.close(pidfd)


def _kill_groups(runtime_pid: int, pid_file: str) -> None:
    """SIGKILL the runtime's session and the exec'd process's group."""
    targets: set[tuple[str, int]] = {("group", runtime_pid)}
    with contextlib.suppress(OSError, ValueError), open(pid_file, encoding="ascii") as f:
        pid = int(f.read().strip())
        targets |= {("pid", pid), ("group", os.getpgid(pid))}
    targets.discard(("group", os.getpgrp()))
    for kind, target in targets:
        with contextlib.suppress(ProcessLookupError):
            if kind == "group":
                os.killpg(target, signal.SIGKILL)
            else:
                os.kill(target, signal.SIGKILL)


def _cri_code(returncode: int) -> int:
    """Popen's -N for death by signal N, as the CRI reports it."""
    return 128 - returncode if returncode < 0 else returncode
