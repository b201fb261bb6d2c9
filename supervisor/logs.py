"""Logging for the supervisor: every record carries the RPC and request id
of the call it belongs to (callvars.py; set by the gRPC front), as CRI-O's
``log.Infof(ctx, …)`` does. Text for people, JSON for log shippers.

The formatters (proto/logfmt.py, shared with the workers) escape every
record's message: it carries CRI input.
"""

from __future__ import annotations

import logging
import sys

from ..proto.logfmt import JsonFormatter, TextFormatter
from .callvars import request_id_var, rpc_var


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rpc = rpc_var.get()
        record.request_id = request_id_var.get()
        return True


def configure(level: int, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter("supervisor", ("rpc", "request_id")) if fmt == "json"
                         else TextFormatter(
        "%(asctime)s %(levelname)s [supervisor] [%(rpc)s req=%(request_id)s] "
        "%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
