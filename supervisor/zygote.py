"""The supervisor's end of the worker zygote (workers/zygote.py).

Workers forked from the zygote share every pool's imported modules
copy-on-write; see that module for why and for the protocol.

Invariants:
- A request is answered with the pid of a worker that is already the
  supervisor's child (the zygote double-forks and waits for the middle
  child), so the pool records it, watches its pidfd and reaps it exactly as
  a worker it had exec'd; the call runs on the loop thread like any spawn,
  so no reap sweep can run between the fork and the slot taking the pid.
- An idle zygote exits (``idle_exit``): once the workers are up it would
  only hold its own copy of every page they wrote to. Its closed socket is
  how we learn it; the next spawn starts another, quietly.
- The zygote is a convenience, never a dependency: when it does not answer
  (dead, hung, refused) it is killed and replaced once, and if that fails
  too this spawn falls back to fork+exec. Its exit is reaped by the
  supervision's sweep as an unknown child.
- It serves one request at a time. A start a call waits for (an
  on-demand pool's first worker) awaits its answer on the loop
  (``fork_worker_async``) rather than block it for a new zygote's imports;
  while that request is out, a blocking ``fork_worker`` raises
  ``ZygoteBusy`` and the supervision tries its spawn again at the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys

log = logging.getLogger(__name__)

# The first answer waits for the zygote's imports (about a second on an
# idle 2-core node, several under load); later ones for a double fork.
FIRST_ANSWER_TIMEOUT = 30.0
ANSWER_TIMEOUT = 10.0
MAX_ANSWER = 4096


class ZygoteError(OSError):
    """The zygote did not fork the worker."""


class ZygoteBusy(Exception):
    """A request awaited on the loop holds the zygote; try again shortly.
    Not an OSError: nothing failed, and the caller must not fall back."""


class Zygote:
    """Starts the zygote on first use and asks it for workers."""

    def __init__(self, log_level: int, log_format: str, idle_exit: float,
                 python: str = sys.executable) -> None:
        self._argv = [python, "-m", "podvisor.workers.zygote", "--parent-pid", str(os.getpid()),
                      "--log-level", str(log_level), "--log-format", log_format,
                      "--idle-exit", str(idle_exit)]
        self._sock: socket.socket | None = None
        self._pid: int | None = None
        self._answered = False
        # Set once two zygotes in a row failed: a broken one (a hang costs
        # the loop a timeout) is not tried again in this daemon's life.
        self._given_up = False
        self._busy = False   # a fork_worker_async request is out

    @property
    def pid(self) -> int | None:
        return self._pid

    def fork_worker(self, pool: str, argv: list[str]) -> int:
        """A worker of ``pool`` started with ``argv``; its pid."""
        if self._busy:
            raise ZygoteBusy("the worker zygote is starting another worker")
        if self._given_up:
            raise ZygoteError("the worker zygote failed twice; workers are exec'd")
        request = json.dumps({"pool": pool, "argv": argv}).encode()
        if self._left():
            self.stop()
        for attempt in (1, 2):
            try:
                return self._ask(request)
            except OSError as exc:
                log.warning("Worker zygote failed (%s); %s", exc,
                            "starting another" if attempt == 1 else "giving up on it")
                self.stop()
        self._given_up = True
        raise ZygoteError("the worker zygote did not answer")

    async def fork_worker_async(self, pool: str, argv: list[str]) -> int:
        """``fork_worker``, with the answer awaited instead of blocked on."""
        if self._busy:
            raise ZygoteBusy("the worker zygote is starting another worker")
        if self._given_up:
            raise ZygoteError("the worker zygote failed twice; workers are exec'd")
        request = json.dumps({"pool": pool, "argv": argv}).encode()
        if self._left():
            self.stop()
        self._busy = True
        try:
            for attempt in (1, 2):
                try:
                    return await self._ask_async(request)
                except OSError as exc:
                    log.warning("Worker zygote failed (%s); %s", exc,
                                "starting another" if attempt == 1 else "giving up on it")
                    self.stop()
                except asyncio.CancelledError:
                    # Its answer would come to the next request: this
                    # zygote cannot be asked again.
                    self.stop()
                    raise
        finally:
            self._busy = False
        self._given_up = True
        raise ZygoteError("the worker zygote did not answer")

    def stop(self) -> None:
        """Close our end (the zygote exits on EOF) and make sure it goes."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._pid = None

    def _left(self) -> bool:
        """Has the zygote closed its end (it exits when idle)? Between two
        requests it sends nothing, so anything readable is its EOF."""
        if self._sock is None:
            return False
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        if not poller.poll(0):
            return False
        log.debug("Worker zygote (pid %s) has exited; the next spawn starts another", self._pid)
        return True

    def _ask(self, request: bytes) -> int:
        sock = self._sock or self._start()
        sock.settimeout(self._timeout())
        sock.send(request)
        return self._answer(sock.recv(MAX_ANSWER))

    async def _ask_async(self, request: bytes) -> int:
        sock = self._sock or self._start()
        timeout = self._timeout()
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(sock, request)
            raw = await asyncio.wait_for(loop.sock_recv(sock, MAX_ANSWER), timeout)
        except TimeoutError:
            raise ZygoteError(f"no answer within {timeout:.0f}s") from None
        return self._answer(raw)

    def _timeout(self) -> float:
        return ANSWER_TIMEOUT if self._answered else FIRST_ANSWER_TIMEOUT

    def _answer(self, raw: bytes) -> int:
        if not raw:
            raise ZygoteError("the worker zygote closed its socket")
        self._answered = True
        answer = json.loads(raw)
        if "pid" not in answer:
            raise ZygoteError(str(answer.get("error", "no pid in the answer")))
        return int(answer["pid"])

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            theirs.set_inheritable(True)
            argv = [*self._argv, "--control-fd", str(theirs.fileno())]
            self._pid = spawn(argv)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock, self._answered = ours, False
        log.info("Worker zygote started (pid %d)", self._pid)
        return ours


def spawn(argv: list[str]) -> int:
    """fork+exec ``argv`` with stdin from /dev/null; its pid. Every fd the
    supervisor opens is close-on-exec (PEP 446), so only stdio passes."""
    return os.posix_spawn(argv[0], argv, os.environ,
                          file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)])
