"""``podvisor-conmon monitor``: one container, from create to exit file.

Lifecycle (contract.py has the files)
    spawned -> detached (detach.py) -> create (the runtime's ``create``, with
    the container's stdio) -> synced (one JSON line on --sync-fd) ->
    monitoring (loop.py: output to log and attach, stdin in, control
    commands, SIGCHLD) -> exited (init reaped) -> drained -> exit file ->
    attach clients closed -> adopted children reaped -> exit 0.
    A failed create skips to "delete what it made, sync error, reap, exit
    1": an error on the sync fd means no container is left. So does a sync
    line nobody reads (the spawner's deadline passed): created -> deleted.

Invariants
    - The exit file is written after the log is complete and before attach
      clients see EOF, so whoever sees either can read a final log.
    - Output is drained until every stream reaches EOF, for at most
      ``DRAIN_TIMEOUT`` after the init's exit: a pty delivers the last bytes
      of a dead process asynchronously, and a process outliving the init
      (shared PID namespace) must not hold the exit file back for ever.
    - conmon never signals the container; stopping it is the runtime's job
      (``kill``/``delete``), whose effect conmon only records.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from . import contract
from .attach import AttachServer, StdinSink
from .console import ConsoleError, ConsoleSocket, resize
from .control import ControlServer
from .crilog import CriLog
from .detach import detach
from .loop import READ, Loop, SignalQueue
from .oom import OomWatch
from .proctitle import set_title
from .reap import exit_code, reap_ready, wait_all, wait_exit
from .runtime import Runtime

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 2.0
# How long the runtime's ``delete --force`` of an abandoned container may
# take. Its own bound, not what is left of the spawner's (as little as a
# second, or already past): the delete is what keeps a container nobody
# owns from running on, and a loaded node can take seconds for it.
DELETE_TIMEOUT = 30.0
ATTACH_FLUSH_TIMEOUT = 1.0
READ_MAX = 64 * 1024
# Reads per stream after DRAIN_TIMEOUT, against a writer that never stops.
FINAL_READS = 16


@dataclass(frozen=True)
class MonitorOptions:
    cid: str
    bundle: str
    runtime: str
    runtime_root: str
    systemd_cgroup: bool
    state_dir: str
    exit_dir: str
    log_path: str
    terminal: bool
    stdin: bool
    stdin_once: bool
    sync_fd: int | None
    create_timeout: float

    def state(self, name: str) -> str:
        return os.path.join(self.state_dir, name)


class CreateError(Exception):
    """The container could not be created; the message is for the spawner."""


def start(opts: MonitorOptions) -> int:
    """Entry point in the spawned process: prepare, detach, monitor."""
    try:
        os.makedirs(opts.state_dir, mode=0o700, exist_ok=True)
        os.makedirs(opts.exit_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        print(f"podvisor-conmon: {exc}", file=sys.stderr)
        return 1
    keep = {opts.sync_fd} if opts.sync_fd is not None else set()
    detach(keep, opts.state(contract.CONMON_LOG))
    set_title(f"podvisor-conmon {opts.cid}")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s {opts.cid} %(name)s: %(message)s")
    return run(opts)


def run(opts: MonitorOptions) -> int:
    loop = Loop()
    runtime = Runtime(opts.runtime, opts.runtime_root, opts.state(contract.RUNTIME_LOG),
                      opts.systemd_cgroup)
    # A file left by an earlier container of this id must not pass for ours.
    for stale in (opts.state(contract.ATTACH), opts.state(contract.CTL),
                  opts.state(contract.CONSOLE), opts.state(contract.CONTAINER_PID),
                  os.path.join(opts.exit_dir, opts.cid)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    try:
        crilog = CriLog(opts.log_path)
        attach = AttachServer(loop, opts.state(contract.ATTACH), opts.stdin_once)
    except OSError as exc:
        _sync(opts.sync_fd, error=f"cannot prepare {opts.cid}: {exc}")
        return 1
    container = Container(opts, loop, crilog, attach)
    # Before the sync line: from then on the worker may send SIGUSR1, whose
    # default action would kill us, and the container may exit.
    SignalQueue(loop, {signal.SIGCHLD: container.on_child, signal.SIGUSR1: container.on_usr1})
    try:
        pid = container.create(runtime)
        contract.write_atomic(opts.state(contract.CONMON_PID), f"{os.getpid()}\n".encode(),
                              durable=False)
    except (CreateError, ConsoleError, OSError) as exc:
        log.error("%s", exc)
        # Clean up before answering: an error means no container is left.
        container.abandon(runtime)
        _sync(opts.sync_fd, error=str(exc))
        wait_all()
        return 1
    if not _sync(opts.sync_fd, pid=pid, conmon_pid=os.getpid()):
        # The spawner gave up waiting (its deadline passed) and closed its
        # end: nobody will ever own this container, so it goes as after a
        # failed create, before its process has run.
        log.error("nobody read the sync line; deleting the container")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(opts.state(contract.CONMON_PID))
        container.abandon(runtime)
        wait_all()
        return 1
    container.monitor()
    wait_all()
    return 0


def _sync(fd: int | None, **fields: object) -> bool:
    """Write the sync line; False if the spawner is no longer there to read it."""
    if fd is None:
        return True
    try:
        os.write(fd, contract.sync_line(**fields))
    except OSError:  # EPIPE: the spawner closed its end
        return False
    finally:
        os.close(fd)
    return True


class Container:
    """The container's stdio, log, attach and control, around one init pid."""

    def __init__(self, opts: MonitorOptions, loop: Loop, crilog: CriLog,
                 attach: AttachServer) -> None:
        self._opts = opts
        self._loop = loop
        self._crilog = crilog
        self._attach = attach
        self._control: ControlServer | None = None
        self._outputs: dict[int, int] = {}  # fd -> stream byte
        self._stdin_w = -1
        self._master = -1
        self._created = False
        self._oom: OomWatch | None = None
        self._pid = 0
        self._status: int | None = None
        self._exited_at = 0

    def create(self, runtime: Runtime) -> int:
        """Create the container with its stdio wired to us; its init's pid."""
        opts = self._opts
        self._control = ControlServer(self._loop, opts.state(contract.CTL),
                                      {"reopen": self._reopen, "resize": self._resize})
        console = ConsoleSocket(opts.state(contract.CONSOLE)) if opts.terminal else None
        try:
            self._run_create(runtime, console)
            if console is not None:
                self._master = console.receive_master()
        finally:
            if console is not None:
                console.close()
        with open(opts.state(contract.CONTAINER_PID), encoding="ascii") as f:
            self._pid = int(f.read().strip())
        # The baseline must be read before the worker can start the container.
        self._oom = OomWatch(self._pid)
        if self._master >= 0:
            self._outputs = {self._master: contract.STDOUT}
            if opts.stdin:
                self._stdin_w = os.dup(self._master)
        if self._stdin_w >= 0:
            self._attach.connect_stdin(StdinSink(self._loop, self._stdin_w, self._attach.resume))
        return self._pid

    def _run_create(self, runtime: Runtime, console: ConsoleSocket | None) -> None:
        """The runtime's create; CreateError with its message on failure."""
        opts = self._opts
        argv = runtime.create(opts.cid, opts.bundle, opts.state(contract.CONTAINER_PID),
                              console.path if console else None)
        child_ends: list[int] = []
        if console:
            # The pty is the container's stdio; the runtime's own stderr is
            # captured for its error message.
            stdio = (subprocess.DEVNULL, subprocess.DEVNULL, subprocess.PIPE)
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            self._outputs = {out_r: contract.STDOUT, err_r: contract.STDERR}
            stdin_r: int = subprocess.DEVNULL
            child_ends = [out_w, err_w]
            if opts.stdin:
                stdin_r, self._stdin_w = os.pipe2(os.O_CLOEXEC)
                child_ends.append(stdin_r)
            stdio = (stdin_r, out_w, err_w)
        try:
            proc = subprocess.Popen(argv, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
        finally:
            # The container holds its ends; ours would keep its pipes open.
            for fd in child_ends:
                os.close(fd)
        # Woken by the runtime's exit (a pidfd), not by polling for it.
        if not wait_exit(proc.pid, opts.create_timeout):
            proc.kill()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
            self._created = True  # perhaps half-way: abandon deletes it
            raise CreateError(f"{_name(runtime)} create timed out after "
                              f"{opts.create_timeout:g}s")
        proc.wait()
        stderr = b""
        if proc.stderr is not None:
            # Whatever the runtime wrote is there now; nothing is waited for
            # (a process it left could hold the pipe open).
            os.set_blocking(proc.stderr.fileno(), False)
            with contextlib.suppress(OSError, TypeError):
                stderr = proc.stderr.read() or b""
            proc.stderr.close()
        # Only a create that succeeded made this id ours to delete: a failure
        # may be "id already exists", someone else's container.
        self._created = proc.returncode == 0
        if proc.returncode != 0:
            message = runtime.errors() or (stderr or self._read_stderr()).decode(
                errors="replace").strip() or f"exit status {proc.returncode}"
            prefix = f"{_name(runtime)} create failed: "
            raise CreateError(message if message.startswith(prefix) else prefix + message)

    def _read_stderr(self) -> bytes:
        """In pipe mode a failed runtime's message is in the container's
        stderr pipe, with no container left to write anything else there."""
        for fd, stream in self._outputs.items():
            if stream == contract.STDERR:
                os.set_blocking(fd, False)
                with contextlib.suppress(OSError):
                    return os.read(fd, READ_MAX)
        return b""

    def abandon(self, runtime: Runtime) -> None:
        """After a failed create: delete what was created, close what was
        opened, remove our sockets."""
        if self._created:
            try:
                subprocess.run(runtime.delete(self._opts.cid), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=False, timeout=DELETE_TIMEOUT)
            except subprocess.TimeoutExpired:
                # run() has killed the delete; said here, so that a
                # container it leaves is explained in conmon.log.
                log.error("%s delete did not finish within %gs; the container may be left",
                          _name(runtime), DELETE_TIMEOUT)
        for fd in {*self._outputs, self._stdin_w, self._master}:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._outputs.clear()
        if self._control:
            self._control.close()
        self._attach.close(0)
        self._crilog.close()

    def monitor(self) -> None:
        """Serve the container until its init exits; then record the exit."""
        oom = self._oom
        assert oom is not None, "monitor() before create()"
        oom.arm(self._loop)
        for fd in self._outputs:
            os.set_blocking(fd, False)
            self._loop.watch(fd, READ, functools.partial(self._on_readable, fd))
        # SIGCHLD may have come before there was an init pid to look for.
        self.on_child()
        while self._status is None:
            self._loop.run_once()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self._outputs and (left := deadline - time.monotonic()) > 0:
            self._loop.run_once(left)
        # Past the deadline: take what is buffered now, bounded, and stop.
        for fd in list(self._outputs):
            for _ in range(FINAL_READS):
                if not self._read(fd):
                    break
            if fd in self._outputs:
                self._close_output(fd)
        self._crilog.flush_partial()
        self._crilog.close()
        status = self._status
        sigkilled = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        record = contract.ExitRecord(id=self._opts.cid, pid=self._pid,
                                     exit_code=exit_code(status), exited_at_ns=self._exited_at,
                                     oom_killed=oom.check(sigkilled))
        oom.close()
        contract.write_exit(self._opts.exit_dir, record)
        log.info("container exited: code %d, oom %s", record.exit_code, record.oom_killed)
        self._attach.close(ATTACH_FLUSH_TIMEOUT)
        if self._control:
            self._control.close()
        if self._master >= 0:
            os.close(self._master)

    def on_child(self) -> None:
        for pid, status in reap_ready():
            if pid == self._pid:
                self._status = status
                self._exited_at = time.time_ns()

    def on_usr1(self) -> None:
        try:
            self._crilog.reopen()
        except OSError as exc:
            log.error("reopen of %s failed: %s", self._crilog.path, exc)

    def _on_readable(self, fd: int, _mask: int) -> None:
        self._read(fd)

    def _read(self, fd: int) -> bool:
        """Deliver one read of ``fd`` to the log and attach; False if there
        was nothing (now) or the stream ended."""
        stream = self._outputs.get(fd)
        if stream is None:
            return False
        try:
            data = os.read(fd, READ_MAX)
        except BlockingIOError:
            return False
        except OSError as exc:
            # EIO: the pty's last slave fd closed, the tty's way of saying EOF.
            if exc.errno != errno.EIO:
                log.error("reading %s: %s", contract.STREAM_NAMES[stream], exc)
            data = b""
        if not data:
            self._close_output(fd)
            return False
        self._crilog.write(contract.STREAM_NAMES[stream], data)
        self._attach.broadcast(stream, data)
        return True

    def _close_output(self, fd: int) -> None:
        self._loop.unwatch(fd)
        del self._outputs[fd]
        if fd != self._master:
            os.close(fd)

    def _reopen(self, args: list[str]) -> None:
        if args:
            raise ValueError("reopen takes no arguments")
        self._crilog.reopen()

    def _resize(self, args: list[str]) -> None:
        if self._master < 0:
            raise ValueError("not a terminal")
        try:
            rows, cols = (int(a) for a in args)
        except ValueError:
            raise ValueError("usage: resize <rows> <cols>") from None
        if not (0 < rows < 65536 and 0 < cols < 65536):
            raise ValueError("rows and cols must be 1..65535")
        resize(self._master, rows, cols)


def _name(runtime: Runtime) -> str:
    return os.path.basename(runtime.path)
