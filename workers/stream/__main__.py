"""`python -m podvisor.workers.stream`: the streaming server's worker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..base import OpTable
from ..cli import main
from .ops import StreamService


def run() -> int:
    services: list[StreamService] = []

    def build(settings: Mapping[str, Any]) -> OpTable:
        services.append(StreamService(settings))
        return services[0].table()

    async def startup() -> None:
        await services[0].start()

    return main("stream", build, startup=startup)


if __name__ == "__main__":
    raise SystemExit(run())
