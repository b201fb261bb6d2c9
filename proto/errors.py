"""Errors that cross process boundaries.

Every error a worker op may raise on purpose is a ``BusError`` carrying a
``Code``; it travels as ``{code, message, details}`` and is rebuilt on the
other side by code, never by class name, so renaming a class cannot break
the wire::

    BusError                       (any code)
    ├── InvalidArgument            INVALID_ARGUMENT
    ├── NotFound                   NOT_FOUND
    ├── AlreadyExists              ALREADY_EXISTS
    ├── FailedPrecondition         FAILED_PRECONDITION
    ├── Unimplemented              UNIMPLEMENTED
    ├── Internal                   INTERNAL
    ├── Unavailable                UNAVAILABLE
    ├── DeadlineExceeded           DEADLINE_EXCEEDED
    ├── Cancelled                  CANCELLED
    └── ResourceExhausted          RESOURCE_EXHAUSTED
    ProtocolError                  (not a BusError: a malformed frame)
"""

from __future__ import annotations

import re
import traceback
from typing import Any, ClassVar

from .codes import Code


class BusError(Exception):
    """An error with a status code, raised by an op or by the bus itself."""

    code: ClassVar[Code] = Code.UNKNOWN

    def __init__(self, message: str, *, details: dict[str, Any] | None = None,
                 code: Code | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override of the class default

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack-able form carried in a REPLY's ``error`` field."""
        return {"code": int(self.code), "message": self.message, "details": self.details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


class InvalidArgument(BusError):
    code = Code.INVALID_ARGUMENT


class NotFound(BusError):
    code = Code.NOT_FOUND


class AlreadyExists(BusError):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(BusError):
    code = Code.FAILED_PRECONDITION


class Unimplemented(BusError):
    code = Code.UNIMPLEMENTED


class Internal(BusError):
    code = Code.INTERNAL


class Unavailable(BusError):
    code = Code.UNAVAILABLE


class DeadlineExceeded(BusError):
    code = Code.DEADLINE_EXCEEDED


class Cancelled(BusError):
    code = Code.CANCELLED


class ResourceExhausted(BusError):
    """Over a size limit: a request or answer too big for the bus, or CRI
    metadata over podvisor's bound (gRPC answers its own message limit so)."""

    code = Code.RESOURCE_EXHAUSTED


class ProtocolError(Exception):
    """A frame that does not follow the envelope; never sent as a reply code."""


_BY_CODE: dict[Code, type[BusError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition,
                Unimplemented, Internal, Unavailable, DeadlineExceeded, Cancelled,
                ResourceExhausted)
}


def from_wire(error: dict[str, Any]) -> BusError:
    """Rebuild the error a peer sent; unknown codes keep their number."""
    try:
        code = Code(int(error.get("code", Code.UNKNOWN)))
    except ValueError:
        code = Code.UNKNOWN
    message = str(error.get("message", ""))
    details = error.get("details")
    cls = _BY_CODE.get(code, BusError)
    return cls(message, details=details if isinstance(details, dict) else None, code=code)


ECHO_MAX = 256


def shorten(value: object, limit: int = ECHO_MAX) -> str:
    """``value`` as text fit to echo in an error or a log line.

    Values taken from CRI input may be megabytes long and may hold control
    characters; a status message must stay far below gRPC's 8 KiB metadata
    limit and a log line must stay one line. So control characters are
    escaped and the text is cut to ``limit`` characters with an ellipsis
    that says how much was left out.
    """
    text = value if isinstance(value, str) else repr(value)
    cut = len(text) - limit
    text = _CONTROL.sub(_escape, text[:limit])
    return f"{text}…(+{cut} chars)" if cut > 0 else text


def escape(text: str) -> str:
    """``text`` whole, with control characters escaped as ``shorten`` does:
    for log lines, which must stay one line and carry no terminal escapes."""
    return _CONTROL.sub(_escape, text)


def escape_traceback(exc: BaseException | None, formatted: str) -> str:
    """``formatted``, the traceback of ``exc``, fit for a log: its lines kept,
    control characters escaped in each, and the message of every exception
    in the chain on one line (a message is where CRI input shows up)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # Without its final newline: logging strips the traceback's last one.
        only = "".join(traceback.format_exception_only(type(exc), exc)).rstrip("\n")
        formatted = formatted.replace(only, escape(only))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(escape(line) for line in formatted.split("\n"))


# C0 and C1 controls (newlines and ANSI escapes among them) and the Unicode
# line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 \
        else f"\\u{ord(match.group()):04x}"
