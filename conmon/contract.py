"""The contract between podvisor-conmon and the runtime worker: the only API.

The worker talks to conmon through a command line, files and unix sockets,
never a live channel it must keep (CRI-O's model): a worker or supervisor
restart loses nothing. This docstring is the specification; the constants
and record types below are its names.

Command line
    podvisor-conmon monitor --id ID --bundle DIR --runtime PATH
        --runtime-root DIR [--systemd-cgroup] --state-dir DIR --exit-dir DIR
        --log-path FILE [--terminal] [--stdin [--stdin-once]] [--sync-fd FD]
        [--create-timeout SECONDS]
    podvisor-conmon exec --id ID --runtime PATH --runtime-root DIR
        [--systemd-cgroup] --timeout SECONDS [--output-max BYTES] (--process FILE | -- ARG...)
    podvisor-conmon zygote DIR

zygote: the same monitor, forked instead of exec'd
    A long-lived process serving SOCK_SEQPACKET DIR/monitor-zygote.sock:
    each request (zygote.py has the protocol) carries the arguments of
    ``monitor``, its environment, cwd, stderr and sync fd, and is run as
    if exec'd with them: everything below holds for a forked monitor too.
    The answer is the exit status of the spawned process. The zygote exits
    with the process that started it; its death touches no monitor.

monitor: spawn, sync, detach
    The spawned process checks its arguments, creates the state and exit
    dirs, forks and exits 0 at once (2 and a message on stderr for a bad
    command line, 1 if a dir can't be made): the spawner just waits for it.
    The fork becomes a session leader, closes every inherited fd but
    ``--sync-fd``, becomes PR_SET_CHILD_SUBREAPER and runs ``<runtime>
    --root DIR --log <state>/runtime.log --log-format json create --bundle
    DIR --pid-file <state>/container.pid [--console-socket <state>/console]
    ID``. Then it writes exactly one JSON line on the sync fd and closes it:
        {"version": 1, "pid": <container pid>, "conmon_pid": <pid>}
        {"version": 1, "error": "runc create failed: <the runtime's message>"}
    EOF without a line means conmon died first. After an error conmon has
    deleted whatever its create made (never a container it did not create,
    e.g. on "id already exists"), writes no exit file, and exits 1 once it
    has no children left. A spawner that stops waiting closes its end of
    the pipe: conmon, unable to write its pid line, then deletes the
    container it created, removes conmon.pid and exits 1 the same way, so
    a create given up on leaves nothing running. --create-timeout bounds
    the runtime's create (the spawner passes what is left of its
    deadline); the delete after it has a bound of its own (30 s), as the
    spawner's time may be all but gone by then. A stale <exit-dir>/<id> is
    removed at start. The detached monitor is adopted by the spawner's
    nearest subreaper ancestor, else PID 1, which must reap it when it
    exits.

State dir (one per container, mode 0700; at most ~95 bytes long, as unix
socket paths are limited to 107)
    attach         SOCK_SEQPACKET. conmon -> client: packets of one stream
                   byte (1 stdout, 2 stderr; a tty is all 1) then up to 32
                   KiB of raw output, from the moment of connecting. client
                   -> conmon: raw stdin bytes (dropped without --stdin);
                   shutdown(SHUT_WR) ends the client's stdin, and closes the
                   container's stdin under --stdin-once. A client more than
                   1 MiB behind is disconnected. conmon closes every client
                   after the exit file is written: EOF means "exited".
    ctl            SOCK_STREAM, one command per line, one reply line each
                   ("ok" or "error <reason>"): ``reopen`` (ReopenContainerLog:
                   the log path is opened anew; the kubelet renamed the old
                   file) and ``resize <rows> <cols>`` (tty only). SIGUSR1 to
                   conmon also reopens, unacknowledged.
    container.pid  the container's pid, written by the runtime
    conmon.pid     conmon's pid, written once the container is created
    conmon.log     conmon's own diagnostics (its stderr)
    runtime.log    the runtime's log, JSON lines
    attach and ctl exist before the sync line is written and are removed
    when conmon exits; the rest is the worker's to remove with the dir.

Log (--log-path, the kubelet's CRI format, mode 0600, appended)
    ``<timestamp> <stdout|stderr> <P|F> <text>\\n``, timestamp RFC3339Nano in
    UTC with nine digits. A line ends at "\\n" ("\\r\\n" too); its text is
    split into records of at most 16 KiB, all P but the last, F. Output
    still without a newline when the container exits is flushed as P.

Exit file (<exit-dir>/<id>, written once, atomically: temp, fsync, rename)
    {"version": 1, "id": ID, "pid": N, "exit_code": N, "exited_at_ns": N,
     "oom_killed": bool}
    exit_code is 128+signal for a signal; exited_at_ns is epoch ns at reap;
    oom_killed: the kernel OOM-killed a process of the container's memory
    cgroup during its life (oom.py says how).
    The log is complete when the file appears. conmon then waits for every
    process it adopted as subreaper and exits 0. No exit file with conmon
    gone (conmon.pid) means conmon was killed: the exit is unknown.

exec (ExecSync)
    Runs ``<runtime> --root DIR exec --detach --pid-file ... ID ARG...`` (or
    ``--process FILE``) in a new session, waits for the process itself as
    its subreaper, and prints one JSON object on stdout (exit status 0;
    anything else is conmon's own failure, told on stderr):
        {"version": 1, "exit_code": N, "timed_out": bool, "stdout": base64,
         "stderr": base64, "stdout_truncated": bool,
         "stderr_truncated": bool, "runtime_error": str|null}
    At the timeout the exec'd process's group and conmon's own children are
    SIGKILLed and reaped (exit_code 137, timed_out true). When the command
    exits, output already written is drained and the call returns even if a
    background child still holds the pipes. runtime_error is the runtime's
    own error (e.g. "container does not exist"; exit_code is then the
    runtime's status), not the command's.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

VERSION = 1

# State dir entries.
ATTACH = "attach"
CTL = "ctl"
CONSOLE = "console"
CONTAINER_PID = "container.pid"
CONMON_PID = "conmon.pid"
CONMON_LOG = "conmon.log"
RUNTIME_LOG = "runtime.log"

# Attach packet stream bytes: the fd numbers the output came from.
STDOUT = 1
STDERR = 2
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}

# Kubelet's maximum CRI log record text (its maxLen for the P/F split).
LOG_LINE_MAX = 16 * 1024
# CRI-O's ExecSync output cap, per stream.
EXEC_OUTPUT_MAX = 16 * 1024 * 1024


@dataclass(frozen=True)
class ExitRecord:
    """What <exit-dir>/<id> holds."""

    id: str
    pid: int
    exit_code: int
    exited_at_ns: int
    oom_killed: bool
    version: int = VERSION

    @classmethod
    def load(cls, path: str) -> ExitRecord:
        with open(path, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
        return cls(id=str(data["id"]), pid=int(data["pid"]),
                   exit_code=int(data["exit_code"]),
                   exited_at_ns=int(data["exited_at_ns"]),
                   oom_killed=bool(data["oom_killed"]), version=int(data["version"]))


def write_atomic(path: str, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Write ``data`` so that ``path`` is either absent or complete, even
    across a crash: temp file in the same dir, fsync, rename, fsync dir.
    ``durable=False`` skips the fsyncs: still absent-or-complete for every
    reader and after any kill, but not across a power loss, which a file of
    the state dir (in the run dir) does not outlive anyway."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    if not durable:
        return
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_exit(exit_dir: str, record: ExitRecord) -> None:
    write_atomic(os.path.join(exit_dir, record.id),
                 json.dumps(asdict(record), sort_keys=True).encode() + b"\n")


def sync_line(**fields: object) -> bytes:
    """The one line conmon writes on --sync-fd."""
    return json.dumps({"version": VERSION, **fields}, sort_keys=True).encode() + b"\n"
