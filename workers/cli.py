"""Entry point shared by every pool: ``python -m podvisor.workers.<pool>``.

The supervisor spawns each worker with fork+exec and hands it its settings
as a JSON file it wrote atomically under the run dir (the pool's section of
the effective configuration plus the paths every worker needs), so a worker
never parses TOML and never disagrees with the supervisor about a default.

Log lines are escaped by the shared formatters (proto/logfmt.py): messages
carry CRI input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import setproctitle

from ..proto import envelope
from ..proto.logfmt import JsonFormatter, TextFormatter
from .base import OpTable, Startup, WorkerOptions, WorkerProcess, request_id_var


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(pool: str, index: int, level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(f"{pool} worker {index}", ("request_id",),
                                           {"pool": pool, "worker": index}))
    else:
        handler.setFormatter(TextFormatter(
            f"%(asctime)s %(levelname)s [{pool} worker {index}] [req=%(request_id)s] "
            "%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def load_settings(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        settings = json.load(f)
    if not isinstance(settings, dict):
        raise SystemExit(f"{path}: worker settings must be a JSON object")
    return settings


# Builds a pool's op table once, at worker start, from its settings: ops are
# bound methods of the pool's service, which holds what it parsed.
ServiceFactory = Callable[[Mapping[str, Any]], OpTable]


def main(pool: str, build: ServiceFactory, argv: list[str] | None = None,
         startup: Startup | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"podvisor {pool} worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--settings", required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    # The supervisor writes every key (daemon.worker_settings), so a missing
    # one is a bug worth a KeyError, not a silent default.
    settings: Mapping[str, Any] = load_settings(args.settings)
    bus = settings["workers"]
    configure_logging(pool, args.index, settings["python_log_level"], settings["log_format"])
    setproctitle.setproctitle(f"podvisor: {pool} worker {args.index}")
    options = WorkerOptions(
        pool=pool, index=args.index, endpoint=args.endpoint, parent_pid=args.parent_pid,
        max_inflight=int(bus["max_inflight"]),
        heartbeat_interval=float(bus["heartbeat_interval"]),
        heartbeat_liveness=int(bus["heartbeat_liveness"]),
        stop_grace=float(bus["stop_timeout"]),
        max_payload=int(settings["bus_max_payload"]),
        fence=os.path.join(settings["runroot"], envelope.FENCE_FILE),
    )
    ops = build(settings)
    return WorkerProcess(options, ops, startup).run()
