"""`python -m podvisor.workers.storage`: one storage worker process, and its
measurer of the writable layers (layer_usage.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..base import OpTable
from ..cli import main
from .layer_usage import Measurer, MeasureSettings
from .ops import StorageService


def run() -> int:
    measurers: list[Measurer] = []

    def build(settings: Mapping[str, Any]) -> OpTable:
        service = StorageService.from_settings(settings)
        measurers.append(Measurer(service.layout, MeasureSettings.from_settings(settings)))
        return service.ops()

    async def startup() -> None:
        # Only starts the thread: READY never waits for a lock or a walk.
        measurers[0].start()

    return main("storage", build, startup=startup)


if __name__ == "__main__":
    raise SystemExit(run())
