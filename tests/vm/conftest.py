"""Fixtures for tests on a real cgroup v2 + systemd host (see __init__.py).

- ``vm_image``: a registry on 127.0.0.1 (Debian's docker-registry, started
  and stopped by its pid) holding a static busybox image; the image
  reference to pull.
- ``vm_node`` (and ``stats_node``, its writable layers measured every
  0.5 s): a podvisor daemon per cgroup driver (``cgroupfs`` and
  ``systemd``; module scope, so each module's tests run once per driver),
  set up for emulation: one worker per pool, minutes for a worker to send
  READY, generous heartbeats, the image pulled. Pods are host-network: the
  tests are about cgroups, not CNI.

Nothing here is autouse and nothing runs at import: modules that do not ask
for these fixtures (and the host's run of the suite) start nothing. The
report header names the cgroup hierarchy, so a VM run's output says which
one it booted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import imagebuild
import pytest
import registry
from daemonlib import Daemon, write_config

from podvisor.proto import api_pb2 as api
from vm import (
    APPLETS,
    DAEMON_START,
    DRIVERS,
    NAMED_CONMON_CGROUP,
    RPC,
    VM_WORKERS,
    VmNode,
    describe_hierarchy,
    keep_log,
    remove_empty_cgroups,
    start_daemon,
    systemd_running,
)


def pytest_report_header(config: pytest.Config) -> str:
    return describe_hierarchy()


@pytest.fixture(scope="session")
def vm_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not os.access(registry.REGISTRY_BIN, os.X_OK):
        pytest.skip(f"needs {registry.REGISTRY_BIN}")
    reg = registry.start_registry(tmp_path_factory.mktemp("registry"))
    try:
        image = imagebuild.build_image([imagebuild.busybox_layer(APPLETS)])
        imagebuild.Pusher(reg.host).push_image("vm/busybox", "latest", image)
        yield f"{reg.host}/vm/busybox:latest"
    finally:
        reg.stop()


def usable_driver(request: pytest.FixtureRequest) -> str:
    """The driver a module-scoped node fixture is run for; skips where this
    host cannot serve it."""
    driver: str = request.param
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if driver == "systemd" and not systemd_running():
        pytest.skip("the systemd driver needs systemd as init")
    return driver


@pytest.fixture(scope="module", params=DRIVERS)
def vm_node(request: pytest.FixtureRequest, vm_image: str) -> Iterator[VmNode]:
    driver = usable_driver(request)
    with running_node(driver, vm_image, request.module.__name__.rsplit(".", 1)[-1]) as node:
        yield node


@contextlib.contextmanager
def running_node(driver: str, image: str, log_name: str,
                 runtime_config: str = "", extra: str = "") -> Iterator[VmNode]:
    """A daemon with cgroup driver ``driver`` (and more ``[podvisor.runtime]``
    keys, then ``extra`` TOML tables), ``image`` pulled; stopped and
    cleaned up on exit."""
    base = Path(tempfile.mkdtemp(prefix="pv-"))
    (base / "net.d").mkdir()
    (base / "registries.conf").write_text(
        f'[[registry]]\nlocation = "{image.split("/")[0]}"\ninsecure = true\n')
    write_config(base, VM_WORKERS, extra=(
        f'[podvisor.image]\nregistries_conf = "{base}/registries.conf"\n'
        f'signature_policy = "{base}/no-policy.json"\n'
        f'[podvisor.runtime]\ncgroup_manager = "{driver}"\n{runtime_config}{extra}'))
    daemon = Daemon(base, dict(os.environ))
    try:
        start_daemon(daemon, DAEMON_START)
        daemon.images.PullImage(api.PullImageRequest(image=api.ImageSpec(image=image)),
                                timeout=RPC)
        node = VmNode(daemon, driver, image, base / "logs")
        yield node
        node.remove_all_pods()
    finally:
        daemon.stop(timeout=60)
        daemon.remove_leftovers()
        keep_log(daemon, f"podvisor-{driver}-{log_name}")
        shutil.rmtree(base, ignore_errors=True)
        if driver == "cgroupfs":
            # The kubelet's QoS parents, should podvisor have made them.
            remove_empty_cgroups("/kubepods/burstable", "/kubepods")


@pytest.fixture(scope="module", params=DRIVERS)
def stats_node(request: pytest.FixtureRequest, vm_image: str) -> Iterator[VmNode]:
    """A daemon per driver that re-measures writable layers every 0.5 s."""
    driver = usable_driver(request)
    with running_node(driver, vm_image, "stats",
                      extra="[podvisor.stats]\nlayer_usage_interval = 0.5\n") as node:
        yield node


@pytest.fixture(scope="module", params=DRIVERS)
def named_conmon_node(request: pytest.FixtureRequest, vm_image: str) -> Iterator[VmNode]:
    """A daemon whose monitors all go below one named place
    (``NAMED_CONMON_CGROUP``): a slice with systemd, a path with cgroupfs."""
    driver = usable_driver(request)
    place = NAMED_CONMON_CGROUP[driver]
    with running_node(driver, vm_image, "named-conmon",
                      f'conmon_cgroup = "{place}"\n') as node:
        yield node
    if driver == "cgroupfs":
        remove_empty_cgroups(place)
