"""`python -m podvisor.workers.runtime`: one runtime worker process."""

from __future__ import annotations

from ..cli import main
from .ops import build


def run() -> int:
    return main("runtime", build)


if __name__ == "__main__":
    raise SystemExit(run())
