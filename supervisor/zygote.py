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
- A worker started for a call (an on-demand pool's first, supervision.py)
  is forked only from a zygote still running (``fork_if_running``), never
  from a new one: a zygote made for one fork exits a minute later and
  leaves that worker alone with every pool's imports (41 MiB of PSS for
  the stream worker, against 18 forked early and 19 exec'd); and its
  imports would hold the supervisor's loop for about a second.
"""

from __future__ import annotations

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

    @property
    def pid(self) -> int | None:
        return self._pid

    def fork_worker(self, pool: str, argv: list[str]) -> int:
        """A worker of ``pool`` started with ``argv``; its pid."""
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

    def fork_if_running(self, pool: str, argv: list[str]) -> int:
        """``fork_worker``, from the zygote that runs now or not at all
        (ZygoteError): it never starts one, and does not retry."""
        if self._given_up or self._sock is None or self._left():
            raise ZygoteError("no worker zygote is running")
        try:
            return self._ask(json.dumps({"pool": pool, "argv": argv}).encode())
        except OSError as exc:
            self.stop()
            raise ZygoteError(f"the worker zygote failed: {exc}") from None

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
        sock.settimeout(ANSWER_TIMEOUT if self._answered else FIRST_ANSWER_TIMEOUT)
        sock.send(request)
        raw = sock.recv(MAX_ANSWER)
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
