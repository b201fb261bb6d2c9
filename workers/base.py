"""WorkerProcess: the loop every pool's worker runs.

A worker is a disposable process started by the supervisor's pool manager.
It connects one DEALER socket to its pool's ROUTER, says READY, then serves
REQUESTs until it is told to stop or loses its supervisor.

Threading Model
    One asyncio loop in the main thread owns the socket: it receives, sends
    every reply and heartbeat, and is the only code that touches ZeroMQ.
    Blocking ops (runc, file I/O, plugins) run on op threads
    (workers/opthreads.py), started as ops come, up to ``max_inflight``,
    and ended once idle; coroutine ops run on the loop. Either way a
    worker serves up to ``max_inflight`` requests at once, and the
    supervisor never sends it more.

Heartbeat and Liveness
    The worker sends HEARTBEAT every ``heartbeat_interval`` from the same
    loop that sends replies, so a wedged loop stops heartbeating and gets
    killed. Any frame from the supervisor counts as a sign of life; after
    ``heartbeat_liveness`` silent intervals, or once its parent pid changes,
    the worker exits on its own. The kernel goes first: PR_SET_PDEATHSIG
    kills the worker with SIGKILL the moment its supervisor dies, so after
    ``kill -9`` of the supervisor no worker finishes an op that nobody
    will read, and the fence file (proto/envelope.py) lets the next
    supervisor wait until none is left.

Deadlines and Cancellation
    Every request carries an absolute CLOCK_MONOTONIC deadline. Expired work
    is refused; ops call ``OpContext.check()`` between steps, which raises
    once the deadline passed or the supervisor sent CANCEL. A thread can't be
    interrupted, so an op stuck in a syscall is the supervisor's to kill
    (deadline + overrun grace).

Logging
    Every log line of an op carries the ``call_id`` its request brought
    (``request_id_var``): the supervisor's id for the CRI call, so one grep
    follows the call through the supervisor's log and every worker's. The
    bus's own message id only matches the reply and is never logged.

Size
    Frames in both directions are bounded by ``max_payload``, the limit the
    supervisor computed and wrote into the worker settings. A result too big
    for it is answered RESOURCE_EXHAUSTED: sent as it is, the supervisor's
    ROUTER would drop the connection and the caller would wait for nothing.

Shutdown
    SIGTERM stops intake (new requests get UNAVAILABLE), lets in-flight ones
    finish for up to ``stop_grace`` seconds, sends DISCONNECT and exits 0.
    A worker that notices its supervisor gone before the kernel's SIGKILL
    lands cancels its in-flight ops instead (they stop at their next
    ``check()``): nobody would read their replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import fcntl
import functools
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import zmq
import zmq.asyncio

from ..proto import envelope, malloc
from ..proto.contract import Op, Record, from_wire, to_wire
from ..proto.envelope import Command
from ..proto.errors import (
    BusError,
    Cancelled,
    DeadlineExceeded,
    Internal,
    ProtocolError,
    Unavailable,
    Unimplemented,
    shorten,
)
from . import memprobe
from .opthreads import OpThreads

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
ORPHAN_POLL = 0.1
# Seconds without an op starting or ending before the worker trims malloc's free
# lists: once per burst, not once per op.
TRIM_DELAY = 1.0
# Op threads share one malloc arena (proto/malloc.py): they allocate under the GIL.
WORKER_ARENAS = 1

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "request_id", default=envelope.NO_CALL_ID)


@dataclass
class OpContext:
    """What an op knows about the request it serves."""

    request_id: bytes
    op: str
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)

    def remaining(self) -> float:
        """Seconds left before the caller's deadline (may be negative)."""
        return self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise if the caller has gone or its deadline has passed."""
        if self.cancelled.is_set():
            raise Cancelled(f"{self.op} was cancelled by its caller")
        if self.remaining() <= 0:
            raise DeadlineExceeded(f"{self.op} ran past its deadline")


A = TypeVar("A", bound=Record)
R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class Served(Generic[A, R]):
    """An op bound to the method that serves it. Binding through ``Op``
    lets mypy check the method against the op's declared contract; the
    worker checks the argument map on arrival and the result on return."""

    op: Op[A, R]
    fn: Callable[[OpContext, A], R] | Callable[[OpContext, A], Awaitable[R]]


def serve(*bindings: Served[Any, Any]) -> dict[str, Served[Any, Any]]:
    """A pool's op table from its bindings."""
    return {binding.op.name: binding for binding in bindings}


OpTable = Mapping[str, Served[Any, Any]]
# What a pool that serves more than the bus starts on the worker's loop.
Startup = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class WorkerOptions:
    pool: str
    index: int
    endpoint: str
    parent_pid: int
    max_inflight: int = 16
    heartbeat_interval: float = 0.5
    heartbeat_liveness: int = 3
    stop_grace: float = 10.0
    max_payload: int = envelope.MAX_PAYLOAD
    fence: str = ""  # the run dir's fence file (proto/envelope.py); "" for none


class WorkerProcess:
    """Serve one pool's ops over the bus until stopped (see module docstring)."""

    def __init__(self, options: WorkerOptions, ops: OpTable,
                 startup: Startup | None = None) -> None:
        malloc.limit_arenas(WORKER_ARENAS)  # before the op threads and ZeroMQ's
        self.options = options
        self.ops = ops
        self._startup = startup
        self._inflight: dict[bytes, OpContext] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._last_heard = time.monotonic()
        self._trim_scheduled = False
        self._last_op_event = time.monotonic()
        self._executor = OpThreads(options.max_inflight, f"{options.pool}-op")
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)

    def run(self) -> int:
        """Run until stopped; return the process exit status."""
        # SIGKILL, not SIGTERM: once the supervisor is gone nobody reads a
        # reply, and an op finished after a new supervisor took over would
        # act beside its workers. What a kill leaves half-done, the next
        # start's reconcile removes.
        set_parent_death_signal(signal.SIGKILL)
        # The parent may have died before prctl took effect.
        if os.getppid() != self.options.parent_pid:
            log.error("Supervisor %d is gone before start; exiting", self.options.parent_pid)
            return 1
        fence = hold_fence(self.options.fence)
        if os.getppid() != self.options.parent_pid:
            return 1  # a new supervisor may have passed the fence already
        try:
            return asyncio.run(self._main())
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._ctx.destroy(linger=0)
            if fence >= 0:
                os.close(fence)

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        opts = self.options
        memprobe.install(loop, opts.pool)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.IDENTITY, f"{opts.pool}/{opts.index}/{os.getpid()}".encode())
        self._sock.setsockopt(zmq.RCVHWM, 10000)
        self._sock.setsockopt(zmq.SNDHWM, 10000)
        self._sock.connect(opts.endpoint)
        if self._startup is not None:
            # Before READY: a worker whose own server cannot start is a
            # failed start, retried with backoff, never a READY worker.
            await self._startup()
        await self._send(envelope.encode(Command.READY, {
            "pool": opts.pool, "index": opts.index, "pid": os.getpid(),
            "proto": envelope.PROTO_VERSION, "ops": sorted(self.ops),
            "max_inflight": opts.max_inflight,
        }))
        log.info("Worker ready with %d ops", len(self.ops))
        receiver = asyncio.create_task(self._receive_loop())
        beat = asyncio.create_task(self._heartbeat_loop())
        await self._stopping.wait()
        receiver.cancel()
        beat.cancel()
        return await self._shutdown()

    async def _shutdown(self) -> int:
        log.info("Worker stopping with %d requests in flight", len(self._inflight))
        until = time.monotonic() + self.options.stop_grace
        while self._tasks and time.monotonic() < until:
            # Checked while waiting: PR_SET_PDEATHSIG fires as the parent's
            # main thread dies, before getppid() changes. Once the supervisor
            # is gone nobody reads replies, so ops give up at their next check.
            if self._orphaned():
                for ctx in self._inflight.values():
                    ctx.cancelled.set()
            await asyncio.wait(self._tasks, timeout=ORPHAN_POLL)
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(zmq.ZMQError):
            await self._send(envelope.encode(Command.DISCONNECT, {}))
        return 0

    def _orphaned(self) -> bool:
        silent = time.monotonic() - self._last_heard
        window = self.options.heartbeat_interval * self.options.heartbeat_liveness
        return os.getppid() != self.options.parent_pid or silent > window

    async def _send(self, frames: list[bytes]) -> None:
        await self._sock.send_multipart(frames)

    async def _receive_loop(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            self._last_heard = time.monotonic()
            try:
                message = envelope.decode(frames, self.options.max_payload)
            except ProtocolError as exc:
                log.warning("Dropping malformed frame from supervisor: %s", exc)
                continue
            self._handle(message)

    def _handle(self, message: envelope.Message) -> None:
        payload = message.payload
        if message.command is Command.REQUEST:
            self._accept(payload)
        elif message.command is Command.CANCEL:
            ctx = self._inflight.get(payload["id"])
            if ctx is not None:
                ctx.cancelled.set()
        elif message.command is Command.DISCONNECT:
            log.info("Supervisor asked this worker to leave")
            self._stopping.set()
        # HEARTBEAT needs nothing beyond the _last_heard update.

    def _accept(self, payload: dict[str, Any]) -> None:
        ctx = OpContext(request_id=payload["id"], op=payload["op"],
                        deadline=float(payload["deadline"]))
        task = asyncio.create_task(self._serve(ctx, payload["args"], payload["call_id"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, ctx: OpContext, args: dict[str, Any], call_id: str) -> None:
        # The task runs in a copy of the loop's context, so this stays with
        # this op, and _run_op hands it on to the op's thread.
        request_id_var.set(call_id)
        self._inflight[ctx.request_id] = ctx
        started = self._last_op_event = time.monotonic()
        try:
            result = await self._run_op(ctx, args)
            frames = envelope.reply_ok(ctx.request_id, result)
            envelope.check_size(frames, self.options.max_payload, f"the {ctx.op} result")
            log.debug("Op %s done in %.1f ms", ctx.op, (time.monotonic() - started) * 1000)
        except BusError as exc:
            log.debug("Op %s failed: %s: %s", ctx.op, exc.code.name, shorten(exc.message, 1000))
            frames = envelope.reply_error(ctx.request_id, exc.to_wire())
        except Exception:
            # The traceback stays in this worker's log; the kubelet gets a
            # short message (style.md section 7).
            log.exception("Op %s failed unexpectedly", ctx.op)
            frames = envelope.reply_error(
                ctx.request_id, Internal(f"{ctx.op} failed unexpectedly; see podvisor logs")
                .to_wire())
        finally:
            self._inflight.pop(ctx.request_id, None)
            self._last_op_event = time.monotonic()
            self._schedule_trim()
        try:
            await self._send(frames)
        except (ValueError, TypeError) as exc:  # result not msgpack-able: an op bug
            log.error("Op %s returned an unencodable result: %s", ctx.op, exc)
            await self._send(envelope.reply_error(
                ctx.request_id, Internal(f"{ctx.op} returned an unencodable result").to_wire()))

    def _schedule_trim(self, delay: float = TRIM_DELAY) -> None:
        """Trim malloc's free lists once no op started or ended for TRIM_DELAY
        (proto/malloc.py).

        Quiet, not idle: an op still in flight does not hold the trim off.
        The runtime pool always has one, the change feed's long poll (up to
        10 s), so a worker that waited for none in flight never trimmed.
        """
        if not self._trim_scheduled:
            self._trim_scheduled = True
            asyncio.get_running_loop().call_later(delay, self._trim)

    def _trim(self) -> None:
        self._trim_scheduled = False
        quiet = time.monotonic() - self._last_op_event
        if quiet < TRIM_DELAY:  # an op came since: wait for the burst's end
            self._schedule_trim(TRIM_DELAY - quiet)
        elif malloc.trim():
            log.debug("Gave malloc's free pages back to the kernel")

    async def _run_op(self, ctx: OpContext, args: dict[str, Any]) -> Any:
        if self._stopping.is_set():
            raise Unavailable(f"{self.options.pool} worker is stopping")
        ctx.check()
        entry = self.ops.get(ctx.op)
        if entry is None:
            raise Unimplemented(
                f"{ctx.op} is not implemented by the {self.options.pool} pool yet")
        typed = from_wire(args, entry.op.args, f"{ctx.op} arguments")
        return to_wire(await self._call(entry.fn, ctx, typed), entry.op.result)

    async def _call(self, fn: Callable[[OpContext, Any], Any], ctx: OpContext,
                    args: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(ctx, args)
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, ctx, args)
        return await loop.run_in_executor(self._executor, call)

    async def _heartbeat_loop(self) -> None:
        opts = self.options
        window = opts.heartbeat_interval * opts.heartbeat_liveness
        while True:
            await self._send(envelope.encode(Command.HEARTBEAT))
            await asyncio.sleep(opts.heartbeat_interval)
            silent = time.monotonic() - self._last_heard
            if silent > window:
                log.error("No word from the supervisor for %.1fs; exiting", silent)
                self._stopping.set()
                return
            if os.getppid() != opts.parent_pid:
                log.error("Supervisor %d is gone; exiting", opts.parent_pid)
                self._stopping.set()
                return


def hold_fence(path: str) -> int:
    """Hold ``path`` shared for this process's life; return the fd, or -1.

    Not an object lock (workers/locks.py): it says "a worker of this run
    dir lives" to the next supervisor, which waits for it exclusively
    (proto/envelope.py, "Fence"). The fd is close-on-exec, so runc or a
    plugin started by an op never holds it.
    """
    if not path:
        return -1
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` when the parent thread exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
