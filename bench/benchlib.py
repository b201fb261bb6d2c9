"""What the bench scripts share: percentiles and a timing loop."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p95, in milliseconds."""
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1e3, q[94] * 1e3


def timed(call: Callable[[], object], rounds: int) -> list[float]:
    """The seconds each of ``rounds`` calls took."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples
