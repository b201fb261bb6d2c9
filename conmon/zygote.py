"""``podvisor-conmon zygote DIR``: monitors forked from one preloaded process.

Why: an exec'd monitor is a fresh interpreter holding its own copy of every
module it imports, about 10 MiB of PSS per container. The zygote imports
what a monitor needs once, moves those objects out of the collector's
reach (``gc.freeze``) and forks one monitor per request: the monitors share
its pages copy-on-write and each keeps only the pages it writes.

Invariants
    - The zygote is never the parent a container depends on. It parses the
      request's ``monitor`` arguments itself (cli.parse_monitor: the same
      checks and messages as an exec'd monitor), then forks; the fork runs
      monitor.start, which forks the detached monitor (detach.py: setsid,
      subreaper, adopted by the runtime worker's nearest subreaper
      ancestor) and exits. The zygote reaps it at once and answers with its
      exit status. Killing the zygote loses no monitor.
    - A forked monitor starts from the state an exec'd one would have, not
      the zygote's: the zygote sets every signal to its default at start
      and never installs a handler, has no wakeup fd or blocked signal; the
      fork drops the logging handlers, takes the request's environment
      and cwd, and keeps no fd but stdin and stdout (/dev/null), stderr
      (the request's) and the sync fd, at 3. The random module, if anything
      imports it, reseeds itself in every fork (CPython's at-fork hook).
    - Memory: a forked page stays shared until either side writes it. What
      each monitor runs before it idles, and what the zygote runs per
      request, are kept small for that reason (the parser is built once,
      the environment rewritten only if it differs).
    - One zygote per DIR: it holds ``DIR/monitor-zygote.lock`` (flock) for
      its life, and a second one started for the same DIR exits 0 at once.
    - It exits when the process that started it does (a pidfd on its parent,
      the runtime worker), so it never outlives podvisor; the next start
      starts another.

Protocol (SOCK_SEQPACKET at ``DIR/monitor-zygote.sock``, mode 0600)
    One request per connection: a JSON object ``{"version": 1, "args":
    [...], "env": {...}, "cwd": "..."}`` with two fds attached
    (SCM_RIGHTS), the monitor's stderr and its sync fd; ``args`` are the
    arguments of ``podvisor-conmon`` (``monitor ... --sync-fd 3``). The
    answer: ``{"status": N}``, the exit status of the forked process (what
    the exec'd one would have exited with), or ``{"error": text}`` for a
    request the zygote refused; the client then runs the monitor by exec.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import io
import json
import logging
import os
import select
import signal
import socket
import sys
import traceback
from dataclasses import dataclass

from . import cli, monitor
from .monitor import MonitorOptions
from .proctitle import argv_room, set_title

SOCKET = "monitor-zygote.sock"
LOCK = "monitor-zygote.lock"
TITLE = "podvisor-conmon-zygote"
PROTOCOL_VERSION = 1
# The environment rides in the request: a kubelet-sized one fits easily.
MAX_REQUEST = 256 * 1024
# stderr and the sync fd.
FDS = 2
SYNC_FD = 3
BACKLOG = 64
# How long a connected client may take to send its request.
REQUEST_TIMEOUT = 5.0
# Room a monitor's title needs in the argv it inherits from the zygote:
# "podvisor-conmon " and a 64-character id, with its NUL.
TITLE_ROOM = len("podvisor-conmon ") + 64 + 1
# What a monitor imports on first use.
PRELOAD = ("encodings.ascii", "ctypes")
# Of an argument error, for the spawner.
MAX_MESSAGE = 4096


START_ENV = dict(os.environ)


class RequestError(ValueError):
    """A request the zygote will not fork for; the reason goes back."""


@dataclass(frozen=True)
class Request:
    args: list[str]
    env: dict[str, str]
    cwd: str

    @classmethod
    def parse(cls, raw: bytes) -> Request:
        try:
            data = json.loads(raw)
        except ValueError:
            raise RequestError("the request is not JSON") from None
        if not isinstance(data, dict) or data.get("version") != PROTOCOL_VERSION:
            raise RequestError(f"the request is not a version {PROTOCOL_VERSION} object")
        args, env, cwd = data.get("args"), data.get("env"), data.get("cwd")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args) \
                or args[:1] != ["monitor"]:
            raise RequestError("args must be a list of strings starting with monitor")
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise RequestError("env must map strings to strings")
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise RequestError("cwd must be an absolute path")
        return cls(args, env, cwd)


def main(run_dir: str) -> int:
    """Serve ``run_dir`` until the parent exits; 0 if another zygote does."""
    if argv_room() < TITLE_ROOM:
        print(f"podvisor-conmon: the zygote's command line must be at least {TITLE_ROOM} "
              "bytes long: the monitors' titles are written over it", file=sys.stderr)
        return 2
    lock_fd = os.open(os.path.join(run_dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another zygote serves this dir
    parent = _watch_parent()
    if parent is None:
        return 0  # whoever started us is gone already: nobody to serve
    path = os.path.join(run_dir, SOCKET)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a dead zygote's; the lock says none is alive
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old_umask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    listener.listen(BACKLOG)
    bound = os.stat(path).st_ino
    set_title(f"{TITLE} {run_dir}")
    # Left so for good (no handler is ever set here): the forks start with
    # them, at no cost to each.
    _reset_signals()
    for name in PRELOAD:
        importlib.import_module(name)
    cli.warm_up()
    # Everything imported so far is shared with every monitor; keep the
    # collector from writing to those pages in each of them.
    gc.collect()
    gc.freeze()
    try:
        serve(listener, parent)
    finally:
        # Leave the path to a successor that may already have bound it.
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == bound:
                os.unlink(path)
        listener.close()
    return 0


def _watch_parent() -> int | None:
    """A pidfd on our parent, or None if it has already gone.

    A parent that died before this line (a daemon stopped just after it
    started us) has left us to PID 1, whose pidfd never becomes readable:
    watching it would keep us forever.
    """
    parent_pid = os.getppid()
    if parent_pid == 1:
        return None
    try:
        parent = os.pidfd_open(parent_pid)
    except ProcessLookupError:
        return None
    if os.getppid() != parent_pid:  # it went between the two reads
        os.close(parent)
        return None
    return parent


def serve(listener: socket.socket, parent: int) -> None:
    """One request at a time until ``parent`` (a pidfd) is readable."""
    while True:
        ready, _, _ = select.select([listener.fileno(), parent], [], [])
        if parent in ready:
            return
        try:
            conn, _ = listener.accept()
        except OSError:
            continue  # the client gave up before we got to it
        with conn:
            # A client that connects and then sends nothing must not stall
            # every later request.
            conn.settimeout(REQUEST_TIMEOUT)
            answer = handle(conn, listener)
            with contextlib.suppress(OSError):  # the client gave up waiting
                conn.send(json.dumps(answer).encode())


def handle(conn: socket.socket, listener: socket.socket) -> dict[str, int | str]:
    """Fork a monitor for the request on ``conn``; the answer to send."""
    fds: list[int] = []
    try:
        raw, fds, flags, _ = socket.recv_fds(conn, MAX_REQUEST, FDS)
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != FDS:
            raise RequestError(f"a request is one message of at most {MAX_REQUEST} bytes "
                               f"with {FDS} fds")
        request = Request.parse(raw)
        # The fork inherits the cwd; relative paths in the arguments are
        # made absolute against it while parsing.
        os.chdir(request.cwd)
        try:
            options = _parse(request.args, fds[0])
            if isinstance(options, int):
                return {"status": options}
            pid = os.fork()
            if pid == 0:
                _monitor(request, options, fds, (listener, conn))
        finally:
            os.chdir("/")
        _, status = os.waitpid(pid, 0)
        return {"status": os.waitstatus_to_exitcode(status)}
    except (RequestError, OSError) as exc:
        return {"error": str(exc)[:200]}
    finally:
        for fd in fds:
            os.close(fd)


def _parse(args: list[str], stderr: int) -> MonitorOptions | int:
    """The monitor's options, parsed here rather than in every fork (whose
    pages argparse would dirty); else the exit status an exec'd monitor
    would have had, its message written to ``stderr``. ``--sync-fd 3`` is
    checked against our fd 3, not the fork's: the fork has the sync fd there."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return cli.parse_monitor(args)
    except SystemExit as exc:
        with contextlib.suppress(OSError):
            os.write(stderr, errors.getvalue().encode()[:MAX_MESSAGE])
        return exc.code if isinstance(exc.code, int) else 1


def _monitor(request: Request, options: MonitorOptions, fds: list[int],
             sockets: tuple[socket.socket, ...]) -> None:
    """In the fork: become what ``podvisor-conmon monitor`` would start as,
    and run it. Both this process and the detached monitor it forks return
    here, and end here."""
    status = 1
    try:
        for sock in sockets:
            sock.detach()  # closed below with every other zygote fd
        _stdio(*fds)
        # Named as the monitor it is about to be from the start: the worker
        # finds a monitor of an id by its title (proctitle.py).
        set_title(f"podvisor-conmon {options.cid}")
        logging.root.handlers.clear()
        # Usually the environment the zygote started with: rewriting it
        # would only dirty pages.
        if request.env != START_ENV:
            os.environ.clear()
            os.environ.update(request.env)
        sys.argv = ["podvisor-conmon", *request.args]
        status = monitor.start(options)
    except BaseException:  # the monitor's last word before _exit
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def _stdio(stderr: int, sync: int) -> None:
    """/dev/null on 0 and 1, ``stderr`` on 2, ``sync`` on 3, nothing else."""
    # Out of the way of 0-3 first, so that no dup2 below overwrites one.
    stderr, sync = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (stderr, sync))
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(stderr, 2)
    os.dup2(sync, SYNC_FD, inheritable=False)
    # The zygote's lock, pidfd and sockets included: a monitor holding the
    # lock would keep every later zygote of the dir from starting.
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
        if fd > SYNC_FD:
            with contextlib.suppress(OSError):
                os.close(fd)


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            if sig == signal.SIGINT:
                signal.signal(sig, signal.default_int_handler)
            elif sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_IGN)  # as CPython starts
            else:
                signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
