"""The bus: request/reply between the supervisor and one pool's workers.

One ``PoolBus`` per pool binds a ZeroMQ ROUTER at ``ipc://<runroot>/bus/
<pool>.sock`` (mode 0600); every worker of the pool connects a DEALER with
the routing id ``<pool>/<index>/<pid>``. Frames are in proto/envelope.py.

Dispatch
    A request goes to the READY worker with the fewest requests in flight
    that still has room under the ``max_inflight`` it announced. With no
    room anywhere the caller waits, never past its deadline. An op that
    ``waits`` (proto/contract.py) runs on the worker's loop, not in one of
    its threads, so it is not counted against that room.

Request Ids
    Each send has a fresh bus id (``id``), which matches the reply; a retry
    is a new send with a new id, so a late reply of the first try can never
    answer the second. Apart from it travels ``call_id``, the id the logs
    show: the CRI call's request id (callvars.py), so the worker logs the
    op under the id the supervisor logs the call under. Ops that no CRI
    call sent (the reconcile at start, the event feed) get a ``bg-`` id of
    their own for the whole ``call``, retries included.

Deadlines
    The caller's deadline (absolute CLOCK_MONOTONIC) travels with the
    request. When it passes, the caller gets DEADLINE_EXCEEDED at once, the
    worker gets CANCEL, and a reply that still comes is dropped by id and
    counted as late. A worker that keeps such a request more than
    ``overrun_grace`` past its deadline is reported unresponsive: threads
    cannot be cancelled, so only killing the worker frees it.

Heartbeat and Liveness
    Every ``heartbeat_interval`` the bus sends HEARTBEAT to each worker;
    any frame from a worker refreshes it. ``heartbeat_liveness`` silent
    intervals make it dead: its requests fail at once and the pool manager
    is told to kill it.

Worker Death
    Requests held by a dead worker fail with UNAVAILABLE straight away,
    except reads and idempotent create stages (proto/ops.py), which are
    retried once on another live worker. A request whose send failed
    (its worker died before the pool noticed) never reached anyone, so it
    goes to another worker whatever it is.

On Demand
    A pool started on demand (supervision.py) has no worker until a call
    needs one: a call that finds no worker asks ``demand`` for the start
    under way, or a new one, and waits for it within its deadline. A start
    that fails fails its waiters with UNAVAILABLE.

Size
    A payload may have ``max_payload`` bytes (proto/envelope.py says how it
    follows the gRPC limit). A request over it fails RESOURCE_EXHAUSTED
    before it is sent or waits for a worker; the ROUTER disconnects a peer
    whose frame is over it, which is why workers check their replies too.

Hostile Input
    Anything that does not decode is counted and logged (rate-limited); a
    READY from a process the pool did not start, from another protocol
    version, or with another op list than the catalogue's for the pool
    (proto/ops.py: a worker of another build), is refused with DISCONNECT.
    The refused worker exits before it was ever READY, which the pool
    counts as a failure to start (pool.py). Nothing a peer sends can stop
    the receive loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from ..proto import envelope
from ..proto.envelope import Command
from ..proto.errors import (
    DeadlineExceeded,
    Internal,
    ProtocolError,
    Unavailable,
    from_wire,
    shorten,
)
from ..proto.ops import pool_ops
from .callvars import NO_CALL, request_id_var

log = logging.getLogger(__name__)

ROUTER_HWM = 100_000
WARN_EVERY = 10.0
FATAL_POLL = 0.25
# Sends to workers that turn out dead before one takes the request.
UNDELIVERED_RETRIES = 3
# How much of a refused worker's op lists the log line quotes.
OPS_ECHO_MAX = 300


@dataclass
class Link:
    """A worker connected to the bus and READY."""

    identity: bytes
    index: int
    pid: int
    max_inflight: int
    ops: frozenset[str]
    last_seen: float
    inflight: set[bytes] = field(default_factory=set)
    waiting: set[bytes] = field(default_factory=set)  # of inflight: ops that wait on the loop
    suspect: bool = False   # reported unresponsive; gets no new work

    @property
    def has_room(self) -> bool:
        return not self.suspect and len(self.inflight) - len(self.waiting) < self.max_inflight

    def done(self, request_id: bytes) -> None:
        self.inflight.discard(request_id)
        self.waiting.discard(request_id)


@dataclass
class _Pending:
    op: str
    link: Link
    deadline: float
    future: asyncio.Future[Any]
    abandoned: bool = False


class WorkerLost(Exception):
    """The worker holding a request died; the caller decides about retry.

    ``delivered`` is False when the send itself failed: the worker never saw
    the request, so running it elsewhere is safe whatever it does.
    """

    def __init__(self, link: Link, why: str, *, delivered: bool = True) -> None:
        super().__init__(why)
        self.link = link
        self.why = why
        self.delivered = delivered


@dataclass(frozen=True)
class BusTiming:
    heartbeat_interval: float = 0.5
    heartbeat_liveness: int = 3
    overrun_grace: float = 10.0


class _RateLimitedWarning:
    def __init__(self) -> None:
        self._last = 0.0
        self._suppressed = 0

    def warn(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < WARN_EVERY:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        log.warning(msg, *args)


class PoolBus:
    """The ROUTER side of one pool (see module docstring)."""

    def __init__(self, pool: str, endpoint: str, timing: BusTiming, *,
                 admit: Callable[[int, int], bool],
                 on_unresponsive: Callable[[int, str], None],
                 is_fatal: Callable[[], bool],
                 demand: Callable[[], asyncio.Future[None] | None] | None = None,
                 max_payload: int = envelope.MAX_PAYLOAD) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.timing = timing
        self.max_payload = max_payload
        self._admit = admit
        self._on_unresponsive = on_unresponsive
        self._is_fatal = is_fatal
        self._demand = demand
        self._links: dict[bytes, Link] = {}
        self._pending: dict[bytes, _Pending] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sock: zmq.asyncio.Socket | None = None
        self._garbage = _RateLimitedWarning()
        self.stats: Counter[str] = Counter()

    # -- lifecycle ---------------------------------------------------------

    def bind(self, ctx: zmq.asyncio.Context) -> None:
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_payload + 4096)
        sock.setsockopt(zmq.SNDHWM, ROUTER_HWM)
        sock.setsockopt(zmq.RCVHWM, ROUTER_HWM)
        path = self.endpoint.removeprefix("ipc://")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)   # a stale socket from a killed supervisor
        old = os.umask(0o077)  # no window in which others may connect
        try:
            sock.bind(self.endpoint)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._sock = sock

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._receive_loop(), name=f"bus-{self.pool}-recv"),
                       asyncio.create_task(self._heartbeat_loop(), name=f"bus-{self.pool}-beat")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in list(self._links.values()):
            self._drop(link, "the supervisor is stopping")
        if self._sock is not None:
            self._sock.close(linger=0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.endpoint.removeprefix("ipc://"))

    # -- the caller's side ----------------------------------------------------

    async def call(self, op: str, args: dict[str, Any], *, deadline: float,
                   retryable: bool = False, waits: bool = False) -> Any:
        """Run ``op`` on some worker of this pool and return its result.

        Raises the op's ``BusError``, ``DeadlineExceeded`` once ``deadline``
        passes, or ``Unavailable`` when the worker died. A request that
        never reached its worker (the send failed: it had just died) goes to
        another one, as often as there are workers to try; a ``retryable``
        op (a read, or a stage idempotent by its id) is retried once even
        when the worker died holding it.
        """
        call_id = request_id_var.get()
        if call_id != NO_CALL:
            return await self._call(op, args, deadline, retryable, waits, call_id)
        # Set here too, not only sent: the bus's own lines about this op
        # (retries, a dead worker) then carry the id the worker logs.
        call_id = f"bg-{secrets.token_hex(4)}"
        token = request_id_var.set(call_id)
        try:
            return await self._call(op, args, deadline, retryable, waits, call_id)
        finally:
            request_id_var.reset(token)

    async def _call(self, op: str, args: dict[str, Any], deadline: float, retryable: bool,
                    waits: bool, call_id: str) -> Any:
        retried = False
        undelivered = 0
        while True:
            request_id = envelope.new_id()
            frames = envelope.request(op, args, deadline=deadline, call_id=call_id,
                                      request_id=request_id)
            envelope.check_size(frames, self.max_payload, f"the {op} request")
            link = await self._acquire(deadline, op, waits)
            log.debug("Sending %s to %s (pid %d)", op, self._name(link), link.pid)
            pending = _Pending(op, link, deadline, asyncio.get_running_loop().create_future())
            self._pending[request_id] = pending
            link.inflight.add(request_id)
            if waits:
                link.waiting.add(request_id)
            try:
                return await self._exchange(request_id, pending, frames)
            except WorkerLost as lost:
                if time.monotonic() < deadline:
                    if not lost.delivered and undelivered < UNDELIVERED_RETRIES:
                        # Each failed send drops its link, so this ends.
                        undelivered += 1
                        log.warning("Sending %s elsewhere: %s", op, lost.why)
                        self.stats["retries"] += 1
                        continue
                    if retryable and not retried:
                        log.warning("Retrying %s once: %s", op, lost.why)
                        self.stats["retries"] += 1
                        retried = True
                        continue
                raise Unavailable(f"{op} failed: {lost.why}") from None

    async def _exchange(self, request_id: bytes, pending: _Pending, frames: list[bytes]) -> Any:
        try:
            await self._send(pending.link.identity, frames)
        except zmq.ZMQError as exc:
            self._forget(request_id)
            self._drop(pending.link, f"cannot send to it: {exc}")
            raise WorkerLost(pending.link, f"{self._name(pending.link)} is gone",
                             delivered=False) from None
        finally:
            # A payload may be tens of MB; nothing needs it while the reply
            # is awaited (a retry encodes anew).
            frames.clear()
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future),
                                          pending.deadline - time.monotonic())
        except TimeoutError:
            await self._abandon(request_id, pending)
            raise DeadlineExceeded(f"{pending.op} did not finish before its deadline") from None
        except asyncio.CancelledError:
            # The gRPC caller went away: tell the worker, keep the id to
            # recognise the late reply.
            await self._abandon(request_id, pending)
            raise

    async def _acquire(self, deadline: float, op: str, waits: bool = False) -> Link:
        while True:
            candidates = [lk for lk in self._links.values()
                          if lk.has_room or (waits and not lk.suspect)]
            if candidates:
                return min(candidates, key=lambda lk: len(lk.inflight))
            if self._is_fatal():
                raise Unavailable(f"the {self.pool} pool has no live worker (FATAL); "
                                  "see `podvisor status`")
            remaining = deadline - time.monotonic()
            starting = self._demand() if self._demand is not None and not self._links else None
            if starting is not None and remaining > 0:
                # Its failure (UNAVAILABLE) is this call's; at READY the
                # worker's link is there when this wakes.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(starting), remaining)
                continue
            if remaining <= 0:
                if not self._links:
                    raise Unavailable(f"no {self.pool} worker became ready for {op} "
                                      "before its deadline")
                raise DeadlineExceeded(f"every {self.pool} worker stayed busy until the "
                                       f"deadline of {op}")
            wake = self._wake
            # Woken by READY, replies and deaths; the cap makes a pool that
            # just went FATAL fail its waiters promptly too.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(remaining, FATAL_POLL))

    async def _abandon(self, request_id: bytes, pending: _Pending) -> None:
        pending.abandoned = True
        if not pending.future.done():
            pending.future.cancel()
        if request_id in pending.link.inflight:
            with contextlib.suppress(zmq.ZMQError):
                await self._send(pending.link.identity,
                                 envelope.encode(Command.CANCEL, {"id": request_id}))

    # -- the workers' side ----------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self._sock is not None
        while True:
            frames = await self._sock.recv_multipart()
            identity, rest = frames[0], frames[1:]
            try:
                message = envelope.decode(rest, self.max_payload)
            except ProtocolError as exc:
                self.stats["protocol_errors"] += 1
                self._garbage.warn("Malformed frame on the %s bus from %r: %s",
                                   self.pool, identity[:64], exc)
                continue
            link = self._links.get(identity)
            if message.command is Command.READY:
                await self._on_ready(identity, message.payload)
            elif link is None:
                self.stats["unknown_peer"] += 1
                self._garbage.warn("%s from unknown peer %r on the %s bus",
                                   message.command.name, identity[:64], self.pool)
            else:
                link.last_seen = time.monotonic()
                if message.command is Command.REPLY:
                    self._on_reply(link, message.payload)
                elif message.command is Command.DISCONNECT:
                    self._drop(link, "it is shutting down")

    async def _on_ready(self, identity: bytes, info: dict[str, Any]) -> None:
        expected = f"{info['pool']}/{info['index']}/{info['pid']}".encode()
        problem = ""
        if info["proto"] != envelope.PROTO_VERSION:
            problem = (f"speaks bus protocol {info['proto']}, "
                       f"this supervisor {envelope.PROTO_VERSION}")
        elif info["pool"] != self.pool or identity != expected:
            problem = f"identity {identity[:64]!r} does not match {expected!r}"
        elif identity in self._links:
            problem = "sent READY twice"
        elif ops_problem := self._ops_problem(info["ops"]):
            problem = ops_problem
        # Last: admitting moves the slot to READY, so nothing may refuse after.
        elif not self._admit(info["index"], info["pid"]):
            problem = "is not a process this pool started"
        if problem:
            log.error("Refusing worker %r on the %s bus: %s", identity[:64], self.pool, problem)
            self.stats["refused"] += 1
            with contextlib.suppress(zmq.ZMQError):
                await self._send(identity, envelope.encode(Command.DISCONNECT, {}))
            return
        self._links[identity] = Link(
            identity=identity, index=info["index"], pid=info["pid"],
            max_inflight=max(1, info["max_inflight"]),
            ops=frozenset(o for o in info["ops"] if isinstance(o, str)),
            last_seen=time.monotonic())
        self._notify()

    def _ops_problem(self, advertised: list[Any]) -> str:
        """Why a worker serving ``advertised`` may not join, or "".

        A worker must serve exactly the catalogue's ops for its pool: one
        of another build would be sent ops it does not know, and one with
        extra ops serves what this supervisor never sends.
        """
        names = {op for op in advertised if isinstance(op, str)}
        if len(names) != len(advertised):
            return "its op list holds duplicates or non-strings"
        expected = pool_ops(self.pool)
        unknown, missing = sorted(names - expected), sorted(expected - names)
        if not unknown and not missing:
            return ""
        parts = []
        if unknown:
            parts.append(f"serves ops the catalogue does not list: {', '.join(unknown)}")
        if missing:
            parts.append(f"lacks catalogue ops: {', '.join(missing)}")
        return shorten("; ".join(parts), OPS_ECHO_MAX)

    def _on_reply(self, link: Link, payload: dict[str, Any]) -> None:
        request_id = payload["id"]
        link.done(request_id)
        self._notify()
        pending = self._pending.pop(request_id, None)
        if pending is None or pending.abandoned:
            self.stats["late_replies"] += 1
            log.debug("Dropping late reply %s on the %s bus", request_id.hex()[:12], self.pool)
            return
        if pending.future.done():
            return
        if "error" in payload:
            pending.future.set_exception(from_wire(payload["error"]))
        else:
            pending.future.set_result(payload["result"])

    async def _heartbeat_loop(self) -> None:
        interval = self.timing.heartbeat_interval
        window = interval * self.timing.heartbeat_liveness
        while True:
            now = time.monotonic()
            for link in list(self._links.values()):
                if now - link.last_seen > window:
                    self._unresponsive(link, f"missed heartbeats for {now - link.last_seen:.1f}s")
                    continue
                overrun = self._overrun(link, now)
                if overrun:
                    self._unresponsive(link, overrun)
                    continue
                try:
                    await self._send(link.identity, envelope.encode(Command.HEARTBEAT))
                except zmq.ZMQError as exc:
                    self._drop(link, f"cannot send to it: {exc}")
            await asyncio.sleep(interval)

    def _overrun(self, link: Link, now: float) -> str:
        for request_id in link.inflight:
            pending = self._pending.get(request_id)
            if pending and now > pending.deadline + self.timing.overrun_grace:
                return (f"still busy with {pending.op} "
                        f"{now - pending.deadline:.1f}s past its deadline")
        return ""

    def _unresponsive(self, link: Link, why: str) -> None:
        self._drop(link, why)
        self._on_unresponsive(link.pid, why)

    def worker_gone(self, pid: int, how: str) -> None:
        """The pool reaped ``pid``: fail whatever it held, now."""
        for link in list(self._links.values()):
            if link.pid == pid:
                self._drop(link, how)

    def _drop(self, link: Link, why: str) -> None:
        if self._links.pop(link.identity, None) is None:
            return
        lost = WorkerLost(link, f"{self._name(link)} (pid {link.pid}) {why}")
        for request_id in link.inflight:
            pending = self._pending.pop(request_id, None)
            if pending and not pending.future.done():
                pending.future.set_exception(lost)
        link.inflight.clear()
        link.waiting.clear()
        self._notify()

    def _forget(self, request_id: bytes) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.link.done(request_id)

    # -- helpers -------------------------------------------------------------

    async def _send(self, identity: bytes, frames: list[bytes]) -> None:
        assert self._sock is not None
        await self._sock.send_multipart([identity, *frames])

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def _name(self, link: Link) -> str:
        return f"{self.pool} worker {link.index}"

    def inflight_by_pid(self) -> dict[int, int]:
        return {lk.pid: len(lk.inflight) for lk in self._links.values()}


class Bus:
    """All pools' buses; routes an op to its pool by the op catalogue."""

    def __init__(self, pools: dict[str, PoolBus], catalogue: dict[str, Any]) -> None:
        self.pools = pools
        self._catalogue = catalogue

    async def call(self, op: str, args: dict[str, Any], *, deadline: float) -> Any:
        """Run ``op`` on its pool."""
        entry = self._catalogue.get(op)
        if entry is None:
            raise Internal(f"unknown op {op}")
        return await self.pools[entry.pool].call(
            op, args, deadline=deadline, retryable=entry.read_only or entry.idempotent,
            waits=entry.waits)
