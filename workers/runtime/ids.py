"""Finding a pod or container record by the id a caller sent.

Ids are 64 lowercase hex digits; like crictl, callers may send a unique
prefix. Anything else is not an id podvisor gave out (and is never used as
a path component): it is simply not found, which keeps Stop/Remove of
"absent" objects successful as the CRI requires.
"""

from __future__ import annotations

import re
from typing import Any

from ...proto.errors import InvalidArgument, NotFound
from ..records import RecordDir

ID_PREFIX = re.compile(r"[0-9a-f]{1,64}")
FULL_ID = re.compile(r"[0-9a-f]{64}")


def check_new(object_id: str) -> None:
    """Refuse an id for a new record that is not one podvisor gives out."""
    if not FULL_ID.fullmatch(object_id):
        raise InvalidArgument(f"id {object_id[:80]!r} is not 64 lowercase hex digits")


def resolve(records: RecordDir, prefix: str, kind: str, field: str) -> str:
    """The full id of the one ``kind`` record whose id starts with ``prefix``."""
    if not prefix:
        raise InvalidArgument(f"{field} is required")
    if not ID_PREFIX.fullmatch(prefix):
        raise NotFound(f"{kind} {prefix[:80]} not found")
    if records.load(prefix) is not None:
        return prefix
    matches = [i for i in records.ids() if i.startswith(prefix)]
    if len(matches) > 1:
        raise InvalidArgument(f"{kind} id prefix {prefix} is ambiguous")
    if not matches:
        raise NotFound(f"{kind} {prefix} not found")
    return matches[0]


def load(records: RecordDir, object_id: str, kind: str) -> dict[str, Any]:
    record = records.load(object_id)
    if record is None:
        raise NotFound(f"{kind} {object_id} not found")
    return record


def members(containers: RecordDir, sandbox_id: str) -> list[str]:
    """The ids of the containers recorded in pod ``sandbox_id``."""
    return [c for c in containers.ids()
            if (containers.load(c) or {}).get("sandbox_id") == sandbox_id]
