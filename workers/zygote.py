"""The worker zygote: every pool's modules imported once, then one fork per worker.

Why: a worker that starts with fork+exec imports its pool's stack on its
own, 20-30 MiB of private pages each. Forked from one process that holds
every pool's imports, with those objects moved out of the garbage
collector's reach (``gc.freeze``), the workers share them copy-on-write and
each keeps only the pages it writes.

Invariants:
- The zygote is never a worker's parent. It forks an intermediate child,
  which forks the worker and exits at once; the worker is reparented to the
  supervisor (a child subreaper, supervisor/daemon.py), which reaps, watches
  and kills it exactly as a worker it had exec'd. A worker waits until that
  has happened before it runs, so its parent-death signal is tied to the
  supervisor.
- Before forking, the zygote starts no thread and opens nothing but its
  control socket (closed in the worker), so a forked worker starts as clean
  as an exec'd one: asyncio loops, ZeroMQ contexts and thread pools are all
  made after the fork.
- It dies with the supervisor (PR_SET_PDEATHSIG) and serves one request at a
  time; when it is gone, the supervisor starts another or falls back to
  fork+exec (supervisor/zygote.py).
- It exits after ``--idle-exit`` seconds without a request: every page a
  worker wrote to is then held twice, the zygote's copy serving nobody. A
  burst of restarts within that time still costs a fork each.

Protocol, on a SOCK_SEQPACKET socket: the request is a JSON object
``{"pool": name, "argv": [...]}``, the answer ``{"pid": N}`` or
``{"error": text}``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import ModuleType

import setproctitle

from .base import set_parent_death_signal
from .cli import configure_logging

log = logging.getLogger(__name__)

POOLS = ("image", "storage", "runtime", "net", "stream")
MAX_REQUEST = 64 * 1024
# How long a new worker waits for the intermediate child to exit.
REPARENT_WAIT = 5.0


def preload() -> dict[str, Callable[[], int]]:
    """Import every pool's entry module; return each pool's ``run``."""
    entries: dict[str, Callable[[], int]] = {}
    for pool in POOLS:
        module: ModuleType = importlib.import_module(f"podvisor.workers.{pool}.__main__")
        entries[pool] = module.run
    return entries


def serve(control: socket.socket, entries: dict[str, Callable[[], int]],
          supervisor: int, idle_exit: float) -> None:
    control.settimeout(idle_exit or None)
    while True:
        try:
            request = control.recv(MAX_REQUEST)
        except InterruptedError:
            continue
        except TimeoutError:
            log.debug("Worker zygote idle for %gs; exiting", idle_exit)
            return
        if not request:
            return  # the supervisor closed its end
        answer: dict[str, int | str]
        try:
            answer = {"pid": spawn(control, entries, supervisor, json.loads(request))}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("Cannot fork a worker: %s", exc)
            answer = {"error": str(exc)}
        control.send(json.dumps(answer).encode())


def spawn(control: socket.socket, entries: dict[str, Callable[[], int]], supervisor: int,
          request: dict[str, object]) -> int:
    pool, argv = request["pool"], request["argv"]
    if not isinstance(pool, str) or not isinstance(argv, list):
        raise ValueError("a request needs a pool name and an argv list")
    run = entries[pool]
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(read_end)
        _intermediate(control, write_end, run, [f"podvisor-{pool}", *map(str, argv)],
                      supervisor)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            told = pipe.read()
    finally:
        os.waitpid(middle, 0)
    if not told:
        raise OSError("the intermediate child died before forking the worker")
    return int(told)


def _intermediate(control: socket.socket, write_end: int, run: Callable[[], int],
                  argv: list[str], supervisor: int) -> None:
    """In the intermediate child: fork the worker, tell its pid, and go."""
    status = 1
    try:
        worker = os.fork()
        if worker == 0:
            _worker(control, write_end, run, argv, supervisor)
        os.write(write_end, str(worker).encode())
        status = 0
    finally:
        os._exit(status)


def _worker(control: socket.socket, write_end: int, run: Callable[[], int],
            argv: list[str], supervisor: int) -> None:
    status = 1
    try:
        control.close()
        os.close(write_end)
        deadline = time.monotonic() + REPARENT_WAIT
        while os.getppid() != supervisor and time.monotonic() < deadline:
            time.sleep(0.001)
        sys.argv = argv
        status = run()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the worker's last word before _exit
        logging.getLogger(__name__).exception("Worker failed")
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
        os._exit(status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podvisor worker zygote")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    parser.add_argument("--log-format", default="text")
    parser.add_argument("--idle-exit", type=float, default=0.0)
    args = parser.parse_args(argv)
    configure_logging("zygote", 0, args.log_level, args.log_format)
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != args.parent_pid:
        return 1
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    control = socket.socket(fileno=args.control_fd)
    entries = preload()
    setproctitle.setproctitle("podvisor: worker zygote")
    # Everything imported so far is shared with every worker; keep the
    # collector from writing to those pages in each of them.
    gc.collect()
    gc.freeze()
    serve(control, entries, args.parent_pid, args.idle_exit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
