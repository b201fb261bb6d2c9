"""Exits as they happen, for the supervisor's container event stream.

conmon writes one exit file per container when it exits (the CRI-O model:
files, not a live channel). ``exits_since`` is a long poll over that
directory: it answers the exit files newer than the caller's cursor (their
mtime in ns), waiting up to ``wait`` seconds for one to appear. The cursor
makes it stateless: any runtime worker can serve the next poll, and a
worker restart loses nothing. Files are looked for a few seconds behind
the cursor (an exit file keeps the mtime of its temp file, written before
the rename), and the caller names the ones it has seen there.
"""

from __future__ import annotations

import os
import time

from ...proto import runtime_ops as ops
from ..base import OpContext

POLL_INTERVAL = 0.1
LOOKBACK_NS = 5_000_000_000


def exits_since(exits_dir: str, ctx: OpContext, args: ops.ExitsSince) -> ops.Exits:
    cursor = args.cursor
    recent = set(args.recent)
    until = min(ctx.deadline - 1.0, time.monotonic() + args.wait)
    while True:
        # Look back a little: conmon stamps its temp file, then renames it,
        # so an exit can appear with an mtime older than one already seen.
        found = [(stamp, name) for stamp, name in _newer(exits_dir, cursor - LOOKBACK_NS)
                 if name not in recent]
        if found or time.monotonic() >= until:
            break
        ctx.check()
        time.sleep(POLL_INTERVAL)
    if found:
        cursor = max(cursor, *(stamp for stamp, _ in found))
    return ops.Exits(cursor=cursor, exits=[name for _, name in sorted(found)])


def _newer(directory: str, cursor: int) -> list[tuple[int, str]]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if entry.name.startswith("."):
            continue  # conmon's temp files
        try:
            stamp = entry.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        if stamp > cursor:
            out.append((stamp, entry.name))
    return out
