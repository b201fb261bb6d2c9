"""The log formatters every podvisor process uses (stdlib only).

Both formats escape every record's message, arguments included, here and
nowhere else: they carry CRI input (names, paths, annotations), whose
newlines and terminal escapes must not forge lines or colour a terminal.
Tracebacks keep their line breaks, but not those of exception messages.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import escape, escape_traceback


class TextFormatter(logging.Formatter):
    """``logging.Formatter`` with the message escaped once per line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # format() has just set record.message from msg % args, afresh for
        # every handler, so escaping it here escapes each line exactly once.
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return escape_traceback(ei[1], super().formatException(ei))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (RFC 3339, UTC, milliseconds), level,
    logger, role (which podvisor process: "supervisor", "runtime worker 2"),
    msg, the record attributes named in ``fields`` (set by a logging
    filter), and ``fixed``."""

    def __init__(self, role: str, fields: Sequence[str],
                 fixed: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self._role = role
        self._fields = tuple(fields)
        self._fixed = dict(fixed or {})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # UTC with its zone, so lines from every process and node sort and
        # compare as they are.
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        # Escaped before JSON encoding too, so `jq -r .msg` prints no raw
        # control characters.
        entry: dict[str, object] = {
            "time": self.formatTime(record), "level": record.levelname,
            "logger": record.name, "role": self._role, "msg": escape(record.getMessage()),
            **{name: getattr(record, name, "-") for name in self._fields}, **self._fixed,
        }
        if record.exc_info:
            entry["exc"] = escape_traceback(record.exc_info[1],
                                            self.formatException(record.exc_info))
        return json.dumps(entry)
