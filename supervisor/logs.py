"""Logging for the supervisor: every record carries the RPC and request id
of the call it belongs to (contextvars set by the gRPC front), as CRI-O's
``log.Infof(ctx, …)`` does. Text for people, JSON for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys

from .grpc_server import request_id_var, rpc_var


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rpc = rpc_var.get()
        record.request_id = request_id_var.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "msg": record.getMessage(),
                 "rpc": getattr(record, "rpc", "-"),
                 "request_id": getattr(record, "request_id", "-")}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: int, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s [supervisor] [%(rpc)s req=%(request_id)s] "
        "%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
