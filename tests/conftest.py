"""Fixtures: daemons started and stopped per test or per module, and the
node (registry, CNI world, daemon) a module of pod tests shares."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonlib import Daemon, write_config
from podfixtures import Node, node


@pytest.fixture
def make_daemon() -> Iterator[Callable[..., Daemon]]:
    """Factory: ``make_daemon(workers={...}, extra="toml", env={...}, start=True)``."""
    started: list[Daemon] = []
    bases: list[Path] = []

    def make(workers: dict[str, Any] | None = None, extra: str = "",
             env: dict[str, str] | None = None, start: bool = True) -> Daemon:
        base = Path(tempfile.mkdtemp(prefix="pv-"))
        bases.append(base)
        write_config(base, workers, extra)
        daemon = Daemon(base, {**os.environ, **(env or {})})
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in started:
        daemon.stop()
        daemon.remove_leftovers()
    for base in bases:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """A daemon shared by the read-only tests of one module."""
    base = Path(tempfile.mkdtemp(prefix="pv-"))
    write_config(base)
    d = Daemon(base, dict(os.environ)).start()
    yield d
    d.stop()
    d.remove_leftovers()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", name="n")
def module_node() -> Iterator[Node]:
    """One node for a whole module, whose tests share its daemon. A module
    that needs a node per test imports podfixtures' ``n`` instead."""
    with node() as here:
        yield here
