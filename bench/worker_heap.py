"""What a worker gained between two probe dumps (workers/memprobe.py), or
between two copies of its smaps (bench/worker_steps.sh).

    .venv/bin/python bench/worker_heap.py OLD_STEM NEW_STEM [--top 25] [--by lineno|traceback]
    .venv/bin/python bench/worker_heap.py --smaps OLD.smaps NEW.smaps

OLD_STEM and NEW_STEM name two dumps of one worker, without the suffix
(``/tmp/probe/runtime-1234-0``). Prints the traced sizes, the allocation
sites that grew most, the object types whose counts changed most, and the
threads. Start the daemon with ``PODVISOR_MEMPROBE=<dir>`` and send the
worker SIGUSR2 for each dump.

With ``--smaps``: private dirty kB by mapping name, split into mappings
present in both (and how much their size changed) and mappings made or
dropped in between. A worker's pages written in mappings it inherited from
the zygote, whose size did not change, are copy-on-write, not new memory.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import tracemalloc
from typing import Any

_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def load(stem: str) -> tuple[tracemalloc.Snapshot, dict[str, Any]]:
    with open(stem + ".json", encoding="utf-8") as f:
        meta = json.load(f)
    return tracemalloc.Snapshot.load(stem + ".snap"), meta


def heap(old_stem: str, new_stem: str, top: int, by: str) -> None:
    old, old_meta = load(old_stem)
    new, new_meta = load(new_stem)
    print(f"traced now: {old_meta['traced'][0] / 1024:.0f} kB -> "
          f"{new_meta['traced'][0] / 1024:.0f} kB")
    print(f"== top {top} sites by growth")
    for stat in new.compare_to(old, by)[:top]:
        where = stat.traceback[0] if by != "traceback" else ""
        print(f"{stat.size_diff / 1024:+9.1f} kB {stat.count_diff:+7d} blocks  {where}")
        if by == "traceback":
            for line in stat.traceback.format(limit=8):
                print("      " + line)
    print("== object counts that changed most")
    old_types, new_types = old_meta["types"], new_meta["types"]
    diffs = {t: new_types.get(t, 0) - old_types.get(t, 0) for t in set(old_types) | set(new_types)}
    for name, diff in sorted(diffs.items(), key=lambda kv: -abs(kv[1]))[:top]:
        if diff:
            print(f"{diff:+8d}  {name} ({new_types.get(name, 0)})")
    print(f"== threads: {len(old_meta['threads'])} -> {len(new_meta['threads'])}")
    print("   " + ", ".join(sorted(new_meta["threads"])))


def read_smaps(path: str) -> dict[tuple[str, str], dict[str, int]]:
    """Mappings by (start, name): size and the kB fields of each."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    current: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            head = _MAPPING.match(line)
            if head:
                low, high, _, name = head.groups()
                size = (int(high, 16) - int(low, 16)) // 1024
                name = name.rsplit("/", 1)[-1] or ("[anon 8 MiB: a thread stack]"
                                                   if size in (8188, 8192) else "[anon]")
                current = {"size": size}
                out[(low, name)] = current
            elif line.endswith(" kB\n"):
                key, value = line.split(":", 1)
                current[key] = int(value.split()[0])
    return out


def smaps(old_path: str, new_path: str, top: int) -> None:
    old, new = read_smaps(old_path), read_smaps(new_path)
    rows: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    for key, mapping in new.items():
        row = rows[key[1]]
        if key in old:
            row[0] += mapping.get("Private_Dirty", 0) - old[key].get("Private_Dirty", 0)
            row[1] += mapping["size"] - old[key]["size"]
        else:
            row[2] += mapping.get("Private_Dirty", 0)
    for key, mapping in old.items():
        if key not in new:
            rows[key[1]][3] -= mapping.get("Private_Dirty", 0)
    total = [sum(m.get("Private_Dirty", 0) for m in x.values()) for x in (old, new)]
    print(f"private dirty {total[0]} kB -> {total[1]} kB")
    print(" kept: dirty    size | made  | dropped | mapping")
    for name, row in sorted(rows.items(), key=lambda kv: -sum(map(abs, kv[1])))[:top]:
        if any(row):
            print(f"{row[0]:+11d} {row[1]:+7d} {row[2]:+7d} {row[3]:+9d}   {name}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--by", default="lineno", choices=("lineno", "traceback", "filename"))
    parser.add_argument("--smaps", action="store_true", help="OLD and NEW are smaps copies")
    args = parser.parse_args()
    if args.smaps:
        smaps(args.old, args.new, args.top)
    else:
        heap(args.old, args.new, args.top, args.by)


if __name__ == "__main__":
    main()
