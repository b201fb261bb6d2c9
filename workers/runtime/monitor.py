"""The runtime pool's side of the podvisor-conmon contract.

conmon/contract.py is the specification (command line, state dir, exit
file, exec output). The rooms rule keeps conmon importable by nobody, so
the few names and formats used here are restated, and the tests run both
sides together.

Spawning: ``podvisor-conmon monitor`` is started with a sync pipe; it forks
a detached monitor and exits at once. We learn that first process's exit
status (the monitor itself is adopted by the supervisor, a subreaper, or
PID 1 if the supervisor is gone), then read the one JSON sync line: the
container's pid, or the runtime's error. A dead or silent monitor before
the deadline is an error naming the container. The first process is
forked by the monitor zygote (``MonitorZygote``, conmon/zygote.py), which
reaps it and tells its status, so that monitors share the zygote's pages;
when the zygote cannot take the request it is exec'd here, and we reap it.

Time: every wait here (the runtime's subcommands, the monitor's start,
its create, an exec, a control command) is bounded by the deadline of the
op it serves, passed with each call, never by a fixed timeout: a monitor
can take many seconds to start on a loaded 2-core node. A wait that
runs out is DEADLINE_EXCEEDED. A runtime failure caused by the container's
own configuration (a command or working directory its image cannot
provide) is FAILED_PRECONDITION carrying the runtime's reason; any other
is INTERNAL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import importlib.util
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...proto.errors import (
    BusError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    NotFound,
    shorten,
)

log = logging.getLogger(__name__)

CONMON = "podvisor-conmon"
# conmon/zygote.py's names, restated (the rooms rule): its socket and log in
# the run dir, the fd its forks get the sync pipe on, the status it exits
# with when it can never serve, and the size of its answers.
ZYGOTE_SOCKET = "monitor-zygote.sock"
ZYGOTE_LOG = "monitor-zygote.log"
ZYGOTE_SYNC_FD = 3
ZYGOTE_UNUSABLE = 2
MAX_ANSWER = 4096
# How long a connect or send to the zygote may block (a full backlog)
# before the monitor is exec'd instead.
ZYGOTE_CONNECT = 0.5
# sun_path holds 108 bytes with its NUL.
SUN_PATH_MAX = 107
# A runtime command or monitor start is never given less than this, even at
# or past the deadline: a kill or delete issued then (a stop whose grace
# used the whole call) must still run. The supervisor lets an op overrun
# its deadline by its overrun grace before it kills the worker.
RUN_FLOOR = 1.0
# An exec is killed by conmon at the caller's deadline; conmon then needs
# this long past it (its own start on a loaded node included) to reap the
# command and report, before we give up on conmon itself.
EXEC_GRACE = 5.0

# The runtimes' words for a container whose own configuration cannot run in
# its image: a command that is missing or not executable, a working
# directory that cannot be entered (runc 1.1, then crun 1.8). That is the
# request's doing, not the node's.
_CANNOT_RUN = re.compile(r'exec: "|executable file `|open executable: |chdir to cwd'
                         r'|chdir `|error during container init: mkdir ')
# conmon's CreateError when the runtime's create outlived --create-timeout.
_CREATE_TIMED_OUT = "create timed out after "
# Runtime messages quote CRI input (a command, a path) that may be
# kilobytes long; such words are cut so that the reason after them stays.
_LONG_WORD = re.compile(r"[^\s\"`]{100,}")


def conmon_binary() -> str:
    """The podvisor-conmon next to this interpreter (the venv), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), CONMON)
    return beside if os.access(beside, os.X_OK) else (shutil.which(CONMON) or CONMON)


@dataclass(frozen=True)
class Handler:
    """One OCI runtime handler of the config (``[podvisor.runtime.runtimes.NAME]``).

    Fixed for the worker's life; each call takes the deadline
    (``time.monotonic()``) of the op it serves.
    """

    name: str
    path: str
    root: str
    # runc and crun take their cgroup driver per call, not from the state
    # of the container, so every call of theirs names it.
    systemd_cgroup: bool = False

    def global_args(self) -> list[str]:
        return ["--root", self.root, *(["--systemd-cgroup"] if self.systemd_cgroup else [])]

    def conmon_args(self) -> list[str]:
        """How podvisor-conmon is told to run this handler."""
        return ["--runtime", self.path, "--runtime-root", self.root,
                *(["--systemd-cgroup"] if self.systemd_cgroup else [])]

    def time_left(self, deadline: float) -> float:
        """Seconds a wait may take now: what is left before ``deadline``,
        never less than ``RUN_FLOOR``."""
        return max(RUN_FLOOR, deadline - time.monotonic())

    def run(self, *args: str, deadline: float,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([self.path, *self.global_args(), *args], capture_output=True,
                                  text=True, timeout=self.time_left(deadline), check=False,
                                  input=stdin)
        except subprocess.TimeoutExpired:
            raise DeadlineExceeded(f"{self.name} {args[0]} did not finish before the "
                                   "deadline") from None
        except OSError as exc:
            # The handler's binary was removed or broken after start; Status
            # already reports the runtime not ready for the same reason.
            raise FailedPrecondition(f"runtime handler {self.name} cannot run "
                                     f"{self.path}: {exc.strerror}") from None


def runtime_failure(what: str, message: str) -> BusError:
    """The error for a runtime step ``what`` that failed with ``message``."""
    text = f"{what}: {compact(message)}"
    if _CANNOT_RUN.search(message):
        return FailedPrecondition(text)
    if _CREATE_TIMED_OUT in message:
        return DeadlineExceeded(text)
    return Internal(text)


def compact(message: str) -> str:
    """A runtime's message fit for a status: long words cut, control
    characters escaped, at most about 700 characters."""
    return shorten(_LONG_WORD.sub(lambda m: f"{m.group()[:60]}…", message.strip()), 700)


@dataclass(frozen=True)
class Started:
    pid: int
    conmon_pid: int


def spawn(handler: Handler, container_id: str, bundle: str, state_dir: str, exit_dir: str,
          log_path: str, *, deadline: float, terminal: bool, stdin: bool,
          stdin_once: bool, zygote: MonitorZygote | None = None) -> Started:
    """Start a monitor that runs ``<runtime> create``; wait for its sync line.

    The monitor is forked by ``zygote`` when it takes the request, else
    exec'd. Should the deadline pass first, our end of the sync pipe is
    closed on the way out: a monitor that then creates the container finds
    nobody to tell and deletes it again (contract.py), so nothing is left
    running.
    """
    args = ["monitor", "--id", container_id, "--bundle", bundle, *handler.conmon_args(),
            "--state-dir", state_dir, "--exit-dir", exit_dir, "--log-path", log_path,
            "--create-timeout", f"{handler.time_left(deadline):.3f}"]
    if terminal:
        args.append("--terminal")
    if stdin:
        args.append("--stdin")
        if stdin_once:
            args.append("--stdin-once")
    line = ""
    if zygote is not None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            taken = zygote.fork(args, write_fd, deadline, container_id)
            os.close(write_fd)
            write_fd = -1
            if taken is not Taken.NO:
                line = _read_line(read_fd, deadline, container_id)
        finally:
            if write_fd >= 0:
                os.close(write_fd)
            os.close(read_fd)
        if not line and taken is Taken.YES:
            raise _died_early(container_id)
        # Taken.MAYBE with no line: the zygote died with our request and no
        # monitor holds the pipe; the exec below starts one.
    if not line:
        line = _exec_monitor(handler, args, deadline, container_id)
    try:
        sync = json.loads(line)
    except ValueError:
        raise Internal(f"podvisor-conmon for {container_id} sent {line[:200]!r}") from None
    if "error" in sync:
        raise runtime_failure(f"creating container {container_id}", str(sync["error"]))
    return Started(int(sync["pid"]), int(sync["conmon_pid"]))


def _exec_monitor(handler: Handler, args: list[str], deadline: float,
                  container_id: str) -> str:
    """``podvisor-conmon monitor`` by fork+exec; its sync line."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    argv = [conmon_binary(), *args, "--sync-fd", str(write_fd)]
    try:
        os.set_inheritable(write_fd, True)
        proc = subprocess.Popen(argv, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(write_fd)
        write_fd = -1
        try:
            _, err = proc.communicate(timeout=handler.time_left(deadline))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise DeadlineExceeded(f"podvisor-conmon for {container_id} did not start before "
                                   "the deadline") from None
        if proc.returncode != 0:
            raise _failed(container_id, err)
        line = _read_line(read_fd, deadline, container_id)
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
    if not line:
        raise _died_early(container_id)
    return line


def _failed(container_id: str, stderr: bytes) -> Internal:
    return Internal(f"podvisor-conmon for {container_id} failed: "
                    f"{compact(stderr.decode(errors='replace'))}")


def _died_early(container_id: str) -> Internal:
    return Internal(f"podvisor-conmon for {container_id} died before the container was "
                    "created; see its conmon.log")


def _read_line(fd: int, deadline: float, container_id: str) -> str:
    """The sync line; "" if every writer closed the pipe without one."""
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
            if data:
                raise Internal(f"podvisor-conmon for {container_id} sent a truncated sync "
                               f"line {data[:200]!r}")
            return ""
        data += chunk
    return data.decode(errors="replace")


class Taken(enum.Enum):
    """Whether the zygote forked the monitor asked for."""

    YES = "yes"
    NO = "no"  # refused or not reached: nothing was forked
    MAYBE = "maybe"  # it died holding the request


class MonitorZygote:
    """The runtime pool's end of ``podvisor-conmon zygote`` (conmon/zygote.py).

    One zygote serves a run dir; whichever worker finds none starts one as
    its child (it exits with that worker) and execs this monitor meanwhile:
    a start never waits for, or fails because of, the zygote. Connecting is
    bounded by ``ZYGOTE_CONNECT`` (SO_SNDTIMEO), so a stuck zygote costs a
    start that long at most before the exec; a zygote that took the request
    is waited for until the deadline, as an exec'd monitor would be.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, ZYGOTE_SOCKET)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._given_up = False

    @classmethod
    def for_run_dir(cls, run_dir: str) -> MonitorZygote | None:
        """None where a zygote cannot serve: a socket path too long to bind."""
        if len(os.path.join(run_dir, ZYGOTE_SOCKET).encode()) > SUN_PATH_MAX:
            log.warning("Monitors are exec'd: %s is too long for a unix socket", run_dir)
            return None
        return cls(run_dir)

    @property
    def pid(self) -> int | None:
        """The zygote this worker started, while it runs."""
        with self._lock:
            return self._proc.pid if self._proc and self._proc.poll() is None else None

    def fork(self, args: list[str], sync_fd: int, deadline: float,
             container_id: str) -> Taken:
        """Ask the zygote to run ``podvisor-conmon <args>`` with ``sync_fd``."""
        stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(ZYGOTE_CONNECT))
                try:
                    sock.connect(self.path)
                    socket.send_fds(sock, [_request(args)], [stderr_w, sync_fd])
                except OSError as exc:
                    # Absent, dead (refused), or too busy to take it (EAGAIN).
                    log.debug("Monitor zygote not reached (%s); exec'ing the monitor", exc)
                    self.start()
                    return Taken.NO
                os.close(stderr_w)
                stderr_w = -1
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                _timeval(deadline - time.monotonic()))
                try:
                    raw = sock.recv(MAX_ANSWER)
                except (BlockingIOError, TimeoutError):
                    self.stop()  # a zygote that hung; the next start starts another
                    raise DeadlineExceeded(f"podvisor-conmon for {container_id} did not start "
                                           "before the deadline") from None
                except OSError:
                    raw = b""
            if not raw:
                return Taken.MAYBE
            answer = json.loads(raw)
            if "error" in answer:
                log.warning("Monitor zygote refused %s: %s", container_id, answer["error"])
                return Taken.NO
            if answer["status"] != 0:
                # It exited, and had no child to pass the pipe to: all is there.
                os.set_blocking(stderr_r, False)
                err = b""
                with contextlib.suppress(OSError):
                    err = os.read(stderr_r, 64 * 1024)
                raise _failed(container_id, err)
            return Taken.YES
        finally:
            os.close(stderr_r)
            if stderr_w >= 0:
                os.close(stderr_w)

    def start(self) -> None:
        """Start a zygote unless ours runs; reap ours if it has exited."""
        with self._lock:
            if self._given_up or (self._proc is not None and self._proc.poll() is None):
                return
            if self._proc is not None and self._proc.returncode == ZYGOTE_UNUSABLE:
                # It says it can never serve here (zygote.py); exec from now on.
                log.warning("Monitor zygote unusable (see %s); monitors are exec'd",
                            os.path.join(self.run_dir, ZYGOTE_LOG))
                self._given_up = True
                return
            try:
                self._proc = _start_zygote(self.run_dir)
            except OSError as exc:
                log.warning("Cannot start the monitor zygote: %s", exc)

    def stop(self) -> None:
        """Kill and reap the zygote this worker started (others are left alone)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()


def _start_zygote(run_dir: str) -> subprocess.Popen[bytes]:
    """``podvisor-conmon zygote`` on an interpreter without site (conmon/bootstrap.py)."""
    spec = importlib.util.find_spec("podvisor.conmon")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("podvisor.conmon is not installed")
    bootstrap = os.path.join(os.path.dirname(spec.origin), "bootstrap.py")
    errors = os.open(os.path.join(run_dir, ZYGOTE_LOG),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        return subprocess.Popen([sys.executable, "-I", "-S", bootstrap, "zygote", run_dir],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=errors, cwd="/")
    finally:
        os.close(errors)


def _request(args: list[str]) -> bytes:
    """The zygote's request: our environment and cwd, as an exec would pass them."""
    return json.dumps({"version": 1, "args": [*args, "--sync-fd", str(ZYGOTE_SYNC_FD)],
                       "env": dict(os.environ), "cwd": os.getcwd()}).encode()


def _timeval(seconds: float) -> bytes:
    seconds = max(0.001, seconds)
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))


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
    return is_monitor(pid, os.path.basename(state_dir))


def is_monitor(pid: int, container_id: str) -> bool:
    """Is ``pid`` a live podvisor-conmon monitor of ``container_id``?

    Not any process that reused the pid: another container's monitor, an
    exec in this container, or a zombie (a killed monitor its reaper has
    not collected yet) included.
    """
    return monitored_id(pid) == container_id and process_alive(pid)


def monitored_id(pid: int) -> str | None:
    """The container (or infra) id whose monitor ``pid`` is, else None.

    Once it runs, a monitor's title (conmon/proctitle.py) names the
    container in place of its argv; before, the argv does, the interpreter
    perhaps ahead of the script: ``[python] podvisor-conmon monitor --id
    <id> ...``, as ``spawn`` builds it.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    title = CONMON.encode() + b" "
    if argv[0].startswith(title):
        return argv[0][len(title):].decode(errors="replace")
    for index, arg in enumerate(argv[:2]):
        if os.path.basename(arg) == CONMON.encode() \
                and argv[index + 1:index + 3] == [b"monitor", b"--id"] and len(argv) > index + 3:
            return argv[index + 3].decode(errors="replace")
    return None


def process_alive(pid: int | None) -> bool:
    """Is ``pid`` a live process (not a zombie)?"""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        # A process that goes between the open and the read fails the read
        # with ESRCH, not ENOENT: gone either way.
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


async def wait_exit_async(exit_dir: str, container_id: str, deadline: float,
                          cancelled: threading.Event) -> bool:
    """``wait_exit`` on the worker's event loop, holding no thread: whether
    the exit file came before ``deadline`` (or the op was cancelled)."""
    delay = 0.005
    while read_exit(exit_dir, container_id) is None:
        if time.monotonic() >= deadline or cancelled.is_set():
            return False
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)
    return True


def ctl(state_dir: str, command: str, deadline: float) -> None:
    """Send one command on the monitor's control socket and check its reply."""
    path = os.path.join(state_dir, "ctl")
    verb = command.split()[0]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(max(RUN_FLOOR, deadline - time.monotonic()))
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotFound("the container's monitor is not running") from None
        reply = b""
        try:
            sock.sendall(command.encode() + b"\n")
            while not reply.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except TimeoutError:
            raise DeadlineExceeded(f"the container's monitor did not answer {verb} before "
                                   "the deadline") from None
    text = reply.decode(errors="replace").strip()
    if not text:
        raise Internal(f"the container's monitor gave no answer to {verb}")
    if text != "ok":
        # The monitor refused for a reason of the container's (its log
        # directory removed, say): the kubelet may act on it and retry.
        raise FailedPrecondition(f"{verb} failed: {compact(text)}")


def exec_sync(handler: Handler, container_id: str, process: Mapping[str, Any], timeout: float,
              deadline: float, spool: str) -> dict[str, Any]:
    """Run the OCI ``process`` (containers.exec_process) in the container
    through ``podvisor-conmon exec --process``; its file is written in
    ``spool`` (the container's bundle) and removed once the exec is over.

    conmon kills and reaps the command at its timeout, or at the deadline
    when that comes first (a timeout of 0 runs until then), so nothing the
    exec started is left running once its caller has gone.
    ``deadline_hit`` says which of the two stopped it.
    """
    # Never 0, which conmon reads as "no timeout".
    left = max(0.1, deadline - time.monotonic())
    limit = min(timeout, left) if timeout > 0 else left
    fd, process_file = tempfile.mkstemp(prefix="exec-", suffix=".json", dir=spool)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(process, f)
        argv = [conmon_binary(), "exec", "--id", container_id, *handler.conmon_args(),
                "--timeout", f"{limit:.3f}", "--process", process_file]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=limit + EXEC_GRACE,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeadlineExceeded(f"exec in container {container_id} ran past the deadline") \
                from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(process_file)
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise Internal(f"exec in {container_id} failed: "
                       f"{compact(done.stderr.decode(errors='replace'))}") from None
    timed_out = bool(result["timed_out"])
    return {
        "exit_code": int(result["exit_code"]),
        "stdout": base64.b64decode(result["stdout"]),
        "stderr": base64.b64decode(result["stderr"]),
        "timed_out": timed_out,
        "deadline_hit": timed_out and (timeout <= 0 or limit < timeout),
        "runtime_error": result.get("runtime_error"),
    }


def kill_monitor(state_dir: str) -> None:
    """SIGKILL a monitor whose container is gone (a last resort in cleanup)."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        with open(os.path.join(state_dir, "conmon.pid"), encoding="utf-8") as f:
            pid = int(f.read().strip())
        if conmon_alive(state_dir):
            os.kill(pid, signal.SIGKILL)
