"""An interactive exec: ``<runtime> exec --detach``, the process ours.

The worker is a child subreaper. The runtime starts the process with our
pipes as its stdio (no tty), or creates a pty inside the container and
sends its master over ``--console-socket`` (tty), and exits: the process
is reparented to us, and we wait for its pid (from ``--pid-file``) through
a pidfd, so the client gets the process's own exit status and nobody else
reaps it. (runc refuses a console socket unless it detaches.)

When the client goes first, the process is SIGKILLed and reaped: nothing
of an abandoned exec keeps running in the container.

Output after the exit
    A background child may hold the output open after the process exits;
    what is already written is read for ``DRAIN_GRACE`` seconds at most,
    then the session ends as the kubelet's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import tempfile
import termios
from typing import Any

from ...proto.stream_ops import ExecPlan, Streams

READ_MAX = 64 * 1024
DRAIN_GRACE = 1.0
STDOUT, STDERR = 1, 2
# The process's status when it was not ours to reap (not expected).
UNKNOWN_EXIT = 255


class ExecError(Exception):
    pass


class ExecProcess:
    def __init__(self, plan: ExecPlan, streams: Streams) -> None:
        self._plan = plan
        self._streams = streams
        self._tmp = tempfile.TemporaryDirectory(prefix="podvisor-stream-exec-")
        self._pid_file = os.path.join(self._tmp.name, "exec.pid")
        self._runtime: asyncio.subprocess.Process | None = None
        self._pid = -1
        self._pidfd = -1
        self._status: int | None = None
        self._drain_until: float | None = None
        self._exit: asyncio.Future[None] | None = None
        self._master = -1
        self._stdin_fd = -1
        self._output: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(maxsize=16)
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        plan, tty = self._plan, self._streams.tty
        # The container's own process with the command as its args: its
        # user, cwd and privileges, whichever runtime (crun takes none of
        # them from the container by itself); terminal is set there.
        process = os.path.join(self._tmp.name, "process.json")
        with open(process, "w", encoding="utf-8") as f:
            f.write(plan.process)
        argv = [*plan.runtime, "exec", "--detach", "--pid-file", self._pid_file,
                "--process", process]
        console: socket.socket | None = None
        if tty:
            path = os.path.join(self._tmp.name, "console")
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            console.bind(path)
            console.listen(1)
            argv += ["--console-socket", path]
        argv.append(plan.container_id)
        # Our own pipes, not asyncio's: the runtime exits at once, and the
        # process, not the runtime, holds the far ends.
        pipes = {name: os.pipe2(os.O_CLOEXEC) for name, wanted in (
            ("stdin", self._streams.stdin and not tty),
            ("stdout", self._streams.stdout and not tty),
            ("stderr", self._streams.stderr and not tty)) if wanted}
        near = {"stdin": 1, "stdout": 0, "stderr": 0}
        try:
            with contextlib.ExitStack() as stack:
                if console is not None:
                    stack.enter_context(console)
                null = asyncio.subprocess.DEVNULL
                self._runtime = runtime = await asyncio.create_subprocess_exec(
                    *argv, stdin=pipes["stdin"][0] if "stdin" in pipes else null,
                    stdout=pipes["stdout"][1] if "stdout" in pipes else null,
                    # Without a stderr pipe of the process's, the runtime's
                    # own errors are read from this one.
                    stderr=pipes["stderr"][1] if "stderr" in pipes else asyncio.subprocess.PIPE,
                    start_new_session=True)
                for name, ends in pipes.items():
                    os.close(ends[1 - near[name]])
                    pipes[name] = (ends[near[name]], -1)
                if await runtime.wait() != 0:
                    raise ExecError(await self._runtime_error(pipes.get("stderr")))
                self._pid = self._read_pid()
                self._pidfd = os.pidfd_open(self._pid)
                self._watch_exit()
                if console is not None:
                    self._master = _receive_master(console)
        except BaseException:
            for ends in pipes.values():
                for fd in ends:
                    if fd >= 0:
                        os.close(fd)
            raise
        if self._master >= 0:
            self._stdin_fd = os.dup(self._master)
            self._readers.append(asyncio.create_task(self._read_fd(self._master, STDOUT)))
            return
        if "stdin" in pipes:
            self._stdin_fd = pipes["stdin"][0]
            os.set_blocking(self._stdin_fd, False)
        for name, stream in (("stdout", STDOUT), ("stderr", STDERR)):
            if name in pipes:
                fd = pipes[name][0]
                os.set_blocking(fd, False)
                self._readers.append(asyncio.create_task(self._read_fd(fd, stream, own=True)))

    def _read_pid(self) -> int:
        try:
            with open(self._pid_file, encoding="ascii") as f:
                return int(f.read().strip())
        except (OSError, ValueError) as exc:
            raise ExecError(f"the OCI runtime wrote no pid file: {exc}") from None

    async def _runtime_error(self, stderr: tuple[int, int] | None) -> str:
        assert self._runtime is not None
        err = b""
        if self._runtime.stderr is not None:
            with contextlib.suppress(TimeoutError):
                err = await asyncio.wait_for(self._runtime.stderr.read(4096), 1.0)
        elif stderr is not None:
            os.set_blocking(stderr[0], False)
            with contextlib.suppress(OSError):
                err = os.read(stderr[0], 4096)
        return err.decode(errors="replace").strip() or "the OCI runtime's exec failed"

    async def _read_fd(self, fd: int, stream: int, own: bool = False) -> None:
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        try:
            while True:
                try:
                    data = os.read(fd, READ_MAX)
                except BlockingIOError:
                    readable.clear()
                    await readable.wait()
                    continue
                except OSError:  # EIO: every slave end is closed
                    return
                if not data:
                    return
                await self._output.put((stream, data))
        finally:
            loop.remove_reader(fd)
            if own:
                os.close(fd)

    async def output(self) -> tuple[int, bytes] | None:
        """The next (stream, bytes) of output; None once the exec is over:
        every output is at its end, or the process exited and its output
        stayed silent for ``DRAIN_GRACE`` seconds."""
        assert self._exit is not None
        return await self._next_output(self._exit)

    async def _next_output(self, exited: asyncio.Future[None]) -> tuple[int, bytes] | None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._output.empty():
                return self._output.get_nowait()
            readers = [r for r in self._readers if not r.done()]
            if not readers:
                return None
            left = None
            if exited.done():
                if self._drain_until is None:
                    self._drain_until = loop.time() + DRAIN_GRACE
                left = self._drain_until - loop.time()
                if left <= 0:
                    return None
            getter = asyncio.ensure_future(self._output.get())
            waiting: set[asyncio.Future[Any]] = {getter, *readers}
            if not exited.done():
                waiting.add(exited)
            try:
                await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                got = getter.done()
                if not got:
                    getter.cancel()
            if got:
                # The grace is for a silent output: it starts again.
                self._drain_until = None
                return getter.result()

    def _watch_exit(self) -> None:
        """``_exit`` is done once the process has exited (its pidfd reads)."""
        loop = asyncio.get_running_loop()
        exit_ = self._exit = loop.create_future()

        def exited() -> None:
            loop.remove_reader(self._pidfd)
            if not exit_.done():
                exit_.set_result(None)
        loop.add_reader(self._pidfd, exited)

    async def write_stdin(self, data: bytes) -> None:
        if self._stdin_fd >= 0:
            with contextlib.suppress(OSError):  # the process closed its stdin
                await asyncio.to_thread(_write_all, self._stdin_fd, data)

    async def close_stdin(self) -> None:
        if self._stdin_fd < 0:
            return
        if self._master >= 0:
            # A tty has no end of input but ^D at the start of a line.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_write_all, self._stdin_fd, b"\x04")
            return
        os.close(self._stdin_fd)
        self._stdin_fd = -1

    async def resize(self, width: int, height: int) -> None:
        if self._master >= 0:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._master, termios.TIOCSWINSZ,
                            struct.pack("HHHH", height, width, 0, 0))

    async def wait(self) -> int:
        """The process's exit code (128+N for signal N), once reaped."""
        if self._status is None:
            assert self._exit is not None
            await asyncio.shield(self._exit)
            self._reap()
        assert self._status is not None
        return self._status

    def _reap(self) -> None:
        try:
            _, status = os.waitpid(self._pid, 0)
        except ChildProcessError:
            self._status = UNKNOWN_EXIT
            return
        code = os.waitstatus_to_exitcode(status)
        self._status = 128 - code if code < 0 else code

    async def kill(self) -> None:
        """SIGKILL what runs, and reap it."""
        if self._runtime is not None and self._runtime.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._runtime.pid, signal.SIGKILL)
            await self._runtime.wait()
        if self._pidfd >= 0 and self._status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            await self.wait()

    def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        if self._pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self._pidfd)
        for fd in (self._master, self._stdin_fd, self._pidfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._stdin_fd = self._pidfd = -1
        self._tmp.cleanup()


def _receive_master(console: socket.socket) -> int:
    """The pty master the runtime sent before it exited: its connection
    waits in the listen backlog, fd and all."""
    console.setblocking(False)
    try:
        conn, _ = console.accept()
    except BlockingIOError:
        raise ExecError("the OCI runtime never connected to the console socket") from None
    with conn:
        conn.setblocking(True)
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    if not fds:
        raise ExecError("the OCI runtime sent no pty master")
    for extra in fds[1:]:
        os.close(extra)
    os.set_blocking(fds[0], False)
    return fds[0]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
