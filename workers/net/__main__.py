"""`python -m podvisor.workers.net`: one net worker process."""

from __future__ import annotations

from ..cli import main
from .ops import build


def run() -> int:
    return main("net", build)


if __name__ == "__main__":
    raise SystemExit(run())
