"""``python -m podvisor.supervisor``: the same as the ``podvisor`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
