"""`python -m podvisor.workers.storage`: one storage worker process."""

from __future__ import annotations

from ..cli import main
from .ops import OPS

if __name__ == "__main__":
    raise SystemExit(main("storage", OPS))
