"""`python -m podvisor.workers.image`: one image worker process."""

from __future__ import annotations

from ..cli import main
from .ops import build


def run() -> int:
    return main("image", build)


if __name__ == "__main__":
    raise SystemExit(run())
