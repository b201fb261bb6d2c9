#!/usr/bin/env python3
"""Judge a critest run: fail on any failed spec that the allow-list does not name.

    contrib/critest-check.py JUNIT_XML [ALLOW_TOML]

Prints each failure with the reason it is allowed (or UNEXPECTED), notes
allow-list entries that matched nothing, and exits 1 on an unexpected
failure or on a report with no spec in it.
"""

from __future__ import annotations

import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

SETUP = re.compile(r"\[(Synchronized)?(Before|After)Suite\]")


def failures(junit: Path) -> tuple[int, list[str]]:
    cases = [c for c in ET.parse(junit).iter("testcase")
             if not SETUP.match(c.get("name", ""))]
    ran = [c for c in cases if c.find("skipped") is None]
    failed = [c.get("name", "") for c in cases
              if c.find("failure") is not None or c.find("error") is not None]
    return len(ran), failed


def main(argv: list[str]) -> int:
    junit = Path(argv[1])
    allow_file = Path(argv[2]) if len(argv) > 2 else Path(__file__).with_name("critest-allow.toml")
    allowed = tomllib.loads(allow_file.read_text())["allow"]
    ran, failed = failures(junit)
    if ran == 0:
        print("critest-check: the report holds no spec that ran")
        return 1
    used: set[str] = set()
    unexpected = 0
    for name in failed:
        entry = next((a for a in allowed if a["spec"] in name), None)
        if entry is None:
            unexpected += 1
            print(f"critest-check: UNEXPECTED failure: {name}")
        else:
            used.add(entry["spec"])
            print(f"critest-check: allowed failure: {name} ({entry['reason']})")
    for entry in allowed:
        if entry["spec"] not in used:
            print(f"critest-check: note: allow-list entry matched no failure, remove it? "
                  f"{entry['spec']!r}")
    verdict = "FAILED" if unexpected else "ok"
    print(f"critest-check: {verdict}: {ran} specs ran, {len(failed)} failed, "
          f"{unexpected} not on the allow-list ({allow_file.name})")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
