"""`python -m podvisor.workers.image`: one image worker process."""

from __future__ import annotations

from ..cli import main
from .ops import build

if __name__ == "__main__":
    raise SystemExit(main("image", build))
