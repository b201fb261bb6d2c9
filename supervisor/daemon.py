"""The composition root: builds every part of the daemon and owns the order
in which they start and stop.

Start: run dir and its lock (one daemon per run dir; the lock dies with
its holder, so a new daemon starts cleanly after ``kill -9``) → no worker
of an earlier supervisor left (fence.py) → worker
settings file → buses bound → pools spawned (not an on-demand pool: the
stream pool waits for its first call, supervision.py) → health endpoint → every
pool reconciles its records (recovery.py) → CRI socket.
The CRI socket comes last so that nothing reaches a half-built daemon;
calls that arrive before a pool is READY wait on the bus, within their
deadline.

systemd hears READY=1 only then (sdnotify.py), and STOPPING=1 as a stop
begins.

Stop (SIGTERM/SIGINT): CRI socket closed with a short grace → health
endpoint → workers SIGTERMed and reaped → buses closed. Containers are
never touched: they belong to conmon, which is not our child.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import setproctitle
import zmq
import zmq.asyncio

from ..proto import envelope, ops
from . import config as cfg
from . import hostcheck, recovery
from .bus import Bus, BusTiming, PoolBus
from .container_events import EventHub
from .creates import CreateTable
from .fence import FenceError, fence_old_workers
from .grpc_server import Front, serve
from .health import HealthServer, stream_stats
from .lifecycle import EventPublisher
from .metrics import Metrics
from .opclient import OpClient
from .pool import RestartPolicy, WorkerCommand, WorkerPool, write_settings
from .rpc.container import ContainerService
from .rpc.image import ImageService
from .rpc.metric_build import Catalogue
from .rpc.routes import routes
from .rpc.runtime_info import RuntimeInfoService
from .rpc.sandbox import SandboxService
from .rpc.stats import StatsService
from .rpc.streaming import StreamingService
from .sdnotify import Notifier
from .status_cache import POOLS, CacheGuard, StatusCache
from .supervision import Supervision
from .zygote import Zygote

log = logging.getLogger(__name__)

GRPC_STOP_GRACE = 5.0
PR_SET_CHILD_SUBREAPER = 36


class DaemonError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def bus_endpoint(runroot: str, pool: str) -> str:
    return f"ipc://{runroot}/bus/{pool}.sock"


def events_endpoint(runroot: str) -> str:
    return f"ipc://{runroot}/bus/events.sock"


def lock_run_dir(runroot: str) -> int:
    """Hold ``<runroot>/podvisor.lock`` for the daemon's life; refuse a second daemon."""
    path = os.path.join(runroot, "podvisor.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DaemonError(f"another podvisor (pid {holder}) is running on {runroot}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def become_subreaper() -> None:
    """Adopt the orphans of our workers' children (conmon monitors, after they
    detach) so they are reaped by us, never left to PID 1; the supervision
    loop's waitpid(-1) sweep reaps them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())


def bus_max_payload(config: cfg.Config) -> int:
    """The bus payload limit: whatever the CRI socket accepts or answers fits."""
    api = config.api
    return envelope.payload_limit(max(api.grpc_max_recv_msg_size, api.grpc_max_send_msg_size))


def worker_settings(config: cfg.Config) -> dict[str, Any]:
    """What every worker reads at start: the effective config, plus the
    Python log level so workers need not know CRI-O's level names, and the
    bus payload limit the supervisor's end uses too."""
    settings = cfg.to_dict(config)
    settings["python_log_level"] = cfg.python_log_level(config.log_level)
    settings["bus_max_payload"] = bus_max_payload(config)
    return settings


class Daemon:
    def __init__(self, config: cfg.Config) -> None:
        self.config = config
        self._stop = asyncio.Event()
        # Read before any worker is started: they must not inherit it.
        self.notifier = Notifier()
        self.zygote = (Zygote(cfg.python_log_level(config.log_level), config.log_format,
                              config.workers.zygote_idle_exit)
                       if config.workers.fork_from_zygote else None)

    async def run(self) -> int:
        config = self.config
        for path in (config.root, config.runroot, os.path.join(config.runroot, "bus"),
                     os.path.dirname(config.api.listen)):
            os.makedirs(path, mode=0o755, exist_ok=True)
        lock_fd = lock_run_dir(config.runroot)
        try:
            fence_old_workers(config.runroot, config.workers.stop_timeout)
        except FenceError as exc:
            raise DaemonError(str(exc)) from None
        setproctitle.setproctitle("podvisor: supervisor")
        become_subreaper()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        settings_path = os.path.join(config.runroot, "worker-settings.json")
        write_settings(settings_path, worker_settings(config))

        zctx = zmq.asyncio.Context()
        events = EventPublisher(zmq.Context.instance(), events_endpoint(config.runroot))
        metrics = Metrics()
        # Built before the pools: a worker that becomes READY flushes its pool's entries.
        cache = StatusCache(config.api.status_cache_size)
        pools, buses, supervision = self._build_pools(config, settings_path, events, cache)
        for pool_bus in buses.values():
            pool_bus.bind(zctx)
            pool_bus.start()
        supervision.start()
        metrics.watch(pools, buses)
        metrics.watch_cache(cache)

        health = None
        if config.metrics.enable_metrics:
            health = HealthServer(config.metrics.metrics_host, config.metrics.metrics_port,
                                  pools, buses, metrics)
            await health.start(os.path.join(config.runroot, "health.addr"))
        bus = Bus(buses, ops.CATALOGUE)
        if health is not None:
            health.stream_stats = lambda: stream_stats(bus)
        refused = None
        try:
            refused = await hostcheck.refusal(bus, config.workers.start_timeout)
            if refused is None:
                await self._serve(bus, pools, metrics, cache)
        finally:
            if health is not None:
                await health.stop()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(config.runroot, "health.addr"))
            await supervision.stop(config.workers.stop_timeout)
            if self.zygote is not None:
                self.zygote.stop()
            for pool_bus in buses.values():
                await pool_bus.stop()
            events.close()
            zctx.destroy(linger=0)
            os.close(lock_fd)
        if refused is not None:
            raise DaemonError(refused)
        log.info("podvisor stopped")
        return 0

    async def _serve(self, bus: Bus, pools: dict[str, WorkerPool], metrics: Metrics,
                     cache: StatusCache) -> None:
        """Reconcile, then serve CRI calls until told to stop."""
        config = self.config
        # Records first, then calls: nothing may see a half-created object
        # from before a crash.
        await recovery.reconcile(bus)
        hub = EventHub(bus, cache)
        if cache.size > 0:
            hub.keep()  # the cache learns of exits from the change feed only
        # Each RPC group's service is built once and holds only what it uses.
        # Their ops pass the cache's guard: what may change a kept status drops it.
        client, creates = OpClient(CacheGuard(bus, cache, ops.CATALOGUE)), CreateTable()
        metric_groups = config.stats.included_pod_metrics
        table = routes(RuntimeInfoService(client, pools, metric_groups),
                       SandboxService(client, creates, cache),
                       ContainerService(client, creates, cache), StreamingService(client),
                       StatsService(client, Catalogue(metric_groups)),
                       ImageService(client, metrics, cache), hub)
        front = Front(metrics, config.api.request_timeout)
        server = await serve(front, table, config.api.listen, config.api.grpc_max_send_msg_size,
                             config.api.grpc_max_recv_msg_size)
        log.info("podvisor serving CRI v1 on %s (pid %d)", config.api.listen, os.getpid())
        self.notifier.notify("READY=1", f"STATUS=serving CRI v1 on {config.api.listen}",
                             f"MAINPID={os.getpid()}")
        watchdog = asyncio.create_task(self.notifier.keep_alive())

        await self._stop.wait()
        log.info("Stopping podvisor")
        self.notifier.notify("STOPPING=1")
        watchdog.cancel()

        await hub.stop()
        await server.stop(GRPC_STOP_GRACE)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config.api.listen)

    def _build_pools(self, config: cfg.Config, settings_path: str, events: EventPublisher,
                     cache: StatusCache
                     ) -> tuple[dict[str, WorkerPool], dict[str, PoolBus], Supervision]:
        workers = config.workers
        policy = RestartPolicy(backoff_base=workers.backoff_base, backoff_cap=workers.backoff_cap,
                               startsecs=workers.startsecs, fatal_after=workers.fatal_after,
                               start_timeout=workers.start_timeout)
        timing = BusTiming(heartbeat_interval=workers.heartbeat_interval,
                           heartbeat_liveness=workers.heartbeat_liveness,
                           overrun_grace=workers.overrun_grace)
        command = WorkerCommand(endpoint_for=lambda pool: bus_endpoint(config.runroot, pool),
                                settings_path=settings_path, zygote=self.zygote)
        on_demand = {"stream"} if workers.stream_on_demand else set()
        pools = {name: WorkerPool(name, size, command, policy, events.publish,
                                  on_demand=name in on_demand, first_spawn=command.first)
                 for name, size in workers.pool_sizes().items()}
        buses: dict[str, PoolBus] = {}
        supervision = Supervision(pools, buses)
        for name, pool in pools.items():
            buses[name] = PoolBus(name, bus_endpoint(config.runroot, name), timing,
                                  admit=_admit(pool, cache), on_unresponsive=pool.kill_unresponsive,
                                  is_fatal=pool.is_fatal,
                                  demand=_demand(supervision, name) if pool.on_demand else None,
                                  max_payload=bus_max_payload(config))
        return pools, buses, supervision


def _admit(pool: WorkerPool, cache: StatusCache) -> Callable[[int, int], bool]:
    """The bus's READY check for ``pool``; a worker admitted (a restart, most
    often) flushes what the cache keeps of its pool: whatever a dead worker
    may have left half done is read afresh."""
    def admit(index: int, pid: int) -> bool:
        admitted = pool.mark_ready(index, pid)
        if admitted and pool.name in POOLS:
            cache.flush(pool.name)
        return admitted
    return admit


def _demand(supervision: Supervision, name: str
            ) -> Callable[[], asyncio.Future[None] | None]:
    """The bus's way to have on-demand pool ``name`` started."""
    return lambda: supervision.demand(name)
