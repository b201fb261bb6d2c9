"""Kernel limits that CRI input must fit before it reaches the file system.

A value the CRI allows can still be one the kernel refuses (a 300-byte
path component, a 5000-byte path), and the kernel's ENAMETOOLONG deep in a
worker would surface as INTERNAL. Checking at the boundary turns it into
INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from .errors import InvalidArgument, shorten

NAME_MAX = 255
"""Bytes in one path component (Linux, every common file system)."""

PATH_MAX = 4096
"""Bytes in a path, with its terminating NUL."""

SUN_PATH_MAX = 107
"""Bytes in a unix socket path (sockaddr_un.sun_path less its NUL)."""


def check_path(field: str, value: str) -> None:
    """Refuse a path the kernel could not open: NUL, an over-long component
    or an over-long whole."""
    if "\0" in value:
        raise InvalidArgument(f"{field} {shorten(value)} contains a NUL byte")
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) >= PATH_MAX:
        raise InvalidArgument(f"{field} {shorten(value)} is {len(raw)} bytes; "
                              f"paths are limited to {PATH_MAX - 1}")
    for part in raw.split(b"/"):
        if len(part) > NAME_MAX:
            raise InvalidArgument(f"{field} {shorten(value)} has a component of {len(part)} "
                                  f"bytes; components are limited to {NAME_MAX}")
