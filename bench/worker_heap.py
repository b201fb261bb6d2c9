"""What a worker's heap gained between two probe dumps (workers/memprobe.py).

    .venv/bin/python bench/worker_heap.py OLD_STEM NEW_STEM [--top 25] [--by lineno|traceback]

OLD_STEM and NEW_STEM name two dumps of one worker, without the suffix
(``/tmp/probe/runtime-1234-0``). Prints the traced sizes, the allocation
sites that grew most, the object types whose counts changed most, and the
threads. Start the daemon with ``PODVISOR_MEMPROBE=<dir>`` and send the
worker SIGUSR2 for each dump.
"""

from __future__ import annotations

import argparse
import json
import tracemalloc
from typing import Any


def load(stem: str) -> tuple[tracemalloc.Snapshot, dict[str, Any]]:
    with open(stem + ".json", encoding="utf-8") as f:
        meta = json.load(f)
    return tracemalloc.Snapshot.load(stem + ".snap"), meta


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--by", default="lineno", choices=("lineno", "traceback", "filename"))
    args = parser.parse_args()
    old, old_meta = load(args.old)
    new, new_meta = load(args.new)
    print(f"traced now: {old_meta['traced'][0] / 1024:.0f} kB -> "
          f"{new_meta['traced'][0] / 1024:.0f} kB")
    stats = new.compare_to(old, args.by)
    print(f"== top {args.top} sites by growth")
    for stat in stats[:args.top]:
        print(f"{stat.size_diff / 1024:+9.1f} kB {stat.count_diff:+7d} blocks  "
              f"{stat.traceback[0] if args.by != 'traceback' else ''}")
        if args.by == "traceback":
            for line in stat.traceback.format(limit=8):
                print("      " + line)
    print("== object counts that changed most")
    old_types, new_types = old_meta["types"], new_meta["types"]
    diffs = {t: new_types.get(t, 0) - old_types.get(t, 0) for t in set(old_types) | set(new_types)}
    for name, diff in sorted(diffs.items(), key=lambda kv: -abs(kv[1]))[:args.top]:
        if diff:
            print(f"{diff:+8d}  {name} ({new_types.get(name, 0)})")
    print(f"== threads: {len(old_meta['threads'])} -> {len(new_meta['threads'])}")
    print("   " + ", ".join(sorted(new_meta["threads"])))


if __name__ == "__main__":
    main()
