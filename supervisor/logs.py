"""Logging for the supervisor: every record carries the RPC and request id
of the call it belongs to (contextvars set by the gRPC front), as CRI-O's
``log.Infof(ctx, …)`` does. Text for people, JSON for log shippers.

Both formats escape every record's message, arguments included, here and
nowhere else: they carry CRI input (names, paths, annotations), whose
newlines and terminal escapes must not forge lines or colour a terminal.
Tracebacks keep their line breaks, but not those of exception messages.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from ..proto.errors import escape, escape_traceback
from .grpc_server import request_id_var, rpc_var


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rpc = rpc_var.get()
        record.request_id = request_id_var.get()
        return True


class _TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        # format() has just set record.message from msg % args, afresh for
        # every handler, so escaping it here escapes each line exactly once.
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return escape_traceback(ei[1], super().formatException(ei))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Escaped before JSON encoding too, so `jq -r .msg` prints no raw
        # control characters.
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "msg": escape(record.getMessage()),
                 "rpc": getattr(record, "rpc", "-"),
                 "request_id": getattr(record, "request_id", "-")}
        if record.exc_info:
            entry["exc"] = escape_traceback(record.exc_info[1],
                                            self.formatException(record.exc_info))
        return json.dumps(entry)


def configure(level: int, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter(
        "%(asctime)s %(levelname)s [supervisor] [%(rpc)s req=%(request_id)s] "
        "%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
