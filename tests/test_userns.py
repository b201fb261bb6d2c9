"""User namespaces through the CRI socket (``userns_options``).

Mode POD gives the pod a user namespace of its own with the requested
maps: its containers run as root inside, a mapped id outside; what they
write in their rootfs belongs to the mapped host ids; a volume's files
show through an idmapped mount with their host owners; removal leaves no
pin, mount or process. NODE runs on the node's. CONTAINER, TARGET and bad
maps are INVALID_ARGUMENT and leave nothing.

The test daemon's base dir (``mkdtemp``, mode 0700) is opened to others
(o+x) here, as a node's /var/lib is: the mapped ids must traverse it.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from daemonlib import poll_until
from podfixtures import IDLE, Node, in_prefix, leftovers, node
from podfixtures import prefix as prefix

from podvisor.proto import api_pb2 as api

pytestmark = pytest.mark.timeout(240)

HOST_ID = 100000
ONE = [api.IDMapping(container_id=0, host_id=HOST_ID, length=65536)]
POD_MODE = api.UserNamespace(mode=api.POD, uids=ONE, gids=ONE)


@pytest.fixture(scope="module", name="n")
def open_node() -> Iterator[Node]:
    with node() as here:
        os.chmod(here.daemon.base, 0o711)
        yield here


C = TypeVar("C", api.PodSandboxConfig, api.ContainerConfig)


def with_userns(config: C, userns: api.UserNamespace) -> C:
    """``config`` (a pod's or a container's) asking for ``userns``."""
    config.linux.security_context.namespace_options.userns_options.CopyFrom(userns)
    return config


def pod_with(n: Node, name: str, userns: api.UserNamespace) -> api.PodSandboxConfig:
    return with_userns(n.pod_config(name), userns)


def processes_in(ns_inode: int) -> list[int]:
    """Pids whose user namespace is the one of inode ``ns_inode``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/user").st_ino == ns_inode:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_status_advertises_user_namespaces(n: Node) -> None:
    status = n.daemon.runtime.Status(api.StatusRequest(), timeout=30)
    assert status.runtime_handlers
    assert all(h.features.user_namespaces for h in status.runtime_handlers)


@pytest.mark.parametrize(("userns", "code"), [
    (api.UserNamespace(mode=api.POD, uids=ONE * 2, gids=ONE), grpc.StatusCode.INVALID_ARGUMENT),
    (api.UserNamespace(mode=api.POD, uids=ONE, gids=ONE * 2), grpc.StatusCode.INVALID_ARGUMENT),
    (api.UserNamespace(mode=api.POD, uids=[api.IDMapping(container_id=1, host_id=1000,
                                                         length=10)], gids=ONE),
     grpc.StatusCode.INVALID_ARGUMENT),
    (api.UserNamespace(mode=api.POD, uids=ONE, gids=[api.IDMapping(
        container_id=0, host_id=4294967000, length=65536)]), grpc.StatusCode.INVALID_ARGUMENT),
    (api.UserNamespace(mode=api.CONTAINER), grpc.StatusCode.INVALID_ARGUMENT),
    (api.UserNamespace(mode=api.TARGET), grpc.StatusCode.INVALID_ARGUMENT),
    (api.UserNamespace(mode=api.NODE, uids=ONE), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_bad_user_namespace_requests_are_refused_leaving_nothing(
        n: Node, userns: api.UserNamespace, code: grpc.StatusCode) -> None:
    before = n.daemon.mounts()
    with pytest.raises(grpc.RpcError) as caught:
        n.run_pod(pod_with(n, "userns-refused", userns))
    assert caught.value.code() == code, caught.value.details()
    pods = n.daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items
    assert "userns-refused" not in {p.metadata.name for p in pods}
    assert n.daemon.mounts() == before


def test_node_mode_runs_in_the_node_user_namespace(n: Node) -> None:
    node_mode = api.UserNamespace(mode=api.NODE)
    config = pod_with(n, "userns-node", node_mode)
    pod_id = n.run_pod(config)
    cid = n.run(pod_id, config, with_userns(n.container_config("maps", IDLE), node_mode))
    n.wait_state(cid, api.CONTAINER_RUNNING)
    inside = n.exec(cid, "cat", "/proc/self/uid_map").stdout.decode().split()
    with open("/proc/self/uid_map", encoding="ascii") as f:
        assert inside == f.read().split()
    # A container cannot ask for a user namespace its pod does not have.
    refused = with_userns(n.container_config("own-userns", "true"),
                          api.UserNamespace(mode=api.POD, uids=ONE, gids=ONE))
    with pytest.raises(grpc.RpcError) as caught:
        n.create(pod_id, config, refused)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    n.remove_pod(pod_id)


def no_leftovers(n: Node, prefix: str) -> list[str]:
    """podfixtures.leftovers, and the idmapped mounts' dirs."""
    run = n.daemon.runroot
    found = leftovers(n.daemon, prefix)
    for state in (run / "runtime/idmap", run / "storage/idmap"):
        if state.is_dir():
            found += [str(p) for p in sorted(state.iterdir())]
    return found


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_pod_mode_runs_in_its_own_user_namespace(n: Node, prefix: str, handler: str) -> None:
    volume = Path(tempfile.mkdtemp(prefix="pv-userns-vol-"))
    try:
        os.chmod(volume, 0o700)
        secret = volume / "secret"
        secret.write_text("host root's\n")
        os.chmod(secret, 0o600)
        config = in_prefix(n, "userns-pod", prefix)
        with_userns(config, POD_MODE)
        pod_id = n.run_pod(config, handler)
        pin = n.daemon.runroot / "runtime" / "pods" / pod_id / "ns" / "user"
        ns_inode = os.stat(pin).st_ino
        assert n.pod_status(pod_id).status.network.ip
        container = with_userns(n.container_config("inside", IDLE), POD_MODE)
        container.mounts.append(api.Mount(container_path="/vol", host_path=str(volume)))
        container.mounts.append(api.Mount(container_path="/img", readonly=True,
                                          image=api.ImageSpec(image=n.image)))
        cid = n.run(pod_id, config, container)
        n.wait_state(cid, api.CONTAINER_RUNNING)

        uid_map = n.exec(cid, "cat", "/proc/self/uid_map").stdout.decode().split()
        assert uid_map == ["0", str(HOST_ID), "65536"]
        assert n.exec(cid, "id", "-u").stdout.decode().strip() == "0"
        assert n.exec(cid, "touch", "/made-inside").exit_code == 0
        upper = n.daemon.base / "root" / "storage" / "containers" / cid / "upper"
        made = os.stat(upper / "made-inside")
        assert (made.st_uid, made.st_gid) == (HOST_ID, HOST_ID)
        # Host root's 0600 file reads as root's inside (idmapped volume).
        read = n.exec(cid, "cat", "/vol/secret")
        assert read.exit_code == 0, read.stderr
        assert read.stdout == b"host root's\n"
        assert n.exec(cid, "ls", "-ln", "/vol/secret").stdout.split()[2] == b"0"
        # The image's layers (host root's on disk) are root's inside, in
        # the rootfs and in an image volume alike.
        for path in ("/bin/sh", "/img/bin/sh"):
            assert n.exec(cid, "ls", "-lnL", path).stdout.split()[2:4] == [b"0", b"0"]
        assert n.exec(cid, "/img/bin/echo", "ok").stdout == b"ok\n"
        # The pod's shared files and /dev/shm are its root's.
        for path in ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/dev/shm"):
            assert n.exec(cid, "ls", "-lnd", path).stdout.split()[2:4] == [b"0", b"0"], path
        assert n.exec(cid, "touch", "/dev/shm/made").exit_code == 0
        assert processes_in(ns_inode)
        # A container whose maps do not map container id 0, or are not its
        # pod's, is refused before anything is made for it.
        for name, maps in (("no-zero", [api.IDMapping(container_id=1, host_id=HOST_ID,
                                                      length=65536)]),
                           ("other", [api.IDMapping(container_id=0, host_id=2 * HOST_ID,
                                                    length=65536)])):
            bad = with_userns(n.container_config(name, "true"),
                              api.UserNamespace(mode=api.POD, uids=maps, gids=ONE))
            with pytest.raises(grpc.RpcError) as caught:
                n.create(pod_id, config, bad)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [c.id for c in n.daemon.runtime.ListContainers(
            api.ListContainersRequest(), timeout=10).containers] == [cid]

        n.remove_pod(pod_id)
        assert not pin.exists()
        assert not [m for m in n.daemon.mounts() if pod_id in m or cid in m]
        assert processes_in(ns_inode) == []
        assert secret.read_text() == "host root's\n"
        assert no_leftovers(n, prefix) == []
    finally:
        secret_dir = volume
        for child in secret_dir.iterdir():
            child.unlink()
        secret_dir.rmdir()


def test_pod_mode_survives_kill_9_of_runtime_workers_and_supervisor(
        n: Node, prefix: str) -> None:
    config = in_prefix(n, "userns-survivor", prefix)
    with_userns(config, POD_MODE)
    pod_id = n.run_pod(config)
    pin = n.daemon.runroot / "runtime" / "pods" / pod_id / "ns" / "user"
    ns_inode = os.stat(pin).st_ino
    first = n.run(pod_id, config, with_userns(n.container_config("first", IDLE), POD_MODE))
    n.wait_state(first, api.CONTAINER_RUNNING)

    # Every runtime worker killed: their replacements read the pod's record.
    workers = n.daemon.workers()
    for slot in (("runtime", 1), ("runtime", 2)):
        os.kill(workers[slot]["pid"], signal.SIGKILL)
    for slot in (("runtime", 1), ("runtime", 2)):
        poll_until(lambda slot=slot: n.daemon.workers()[slot]["restarts"] >= 1
                   and n.daemon.workers()[slot]["pid"] != workers[slot]["pid"], 30,
                   what=f"{slot} restarted")
    second = n.run(pod_id, config, with_userns(n.container_config("second", IDLE), POD_MODE))
    n.wait_state(second, api.CONTAINER_RUNNING)
    assert os.stat(f"/proc/{_pid(n, second)}/ns/user").st_ino == ns_inode

    # The supervisor killed and started again.
    os.kill(n.daemon.pid, signal.SIGKILL)
    assert n.daemon.proc is not None
    n.daemon.proc.wait()
    n.daemon.stop()
    n.daemon.start()
    for cid in (first, second):
        assert n.status(cid).state == api.CONTAINER_RUNNING
        assert n.exec(cid, "id", "-u").stdout.decode().strip() == "0"
    assert n.exec(second, "cat", "/proc/self/uid_map").stdout.decode().split() == [
        "0", str(HOST_ID), "65536"]

    n.remove_pod(pod_id)
    assert not pin.exists()
    assert processes_in(ns_inode) == []
    assert no_leftovers(n, prefix) == []


def _pid(n: Node, container_id: str) -> int:
    status = n.daemon.runtime.ContainerStatus(api.ContainerStatusRequest(
        container_id=container_id, verbose=True), timeout=10)
    return int(json.loads(status.info["info"])["pid"])


def test_pod_mode_with_a_pause_image(prefix: str) -> None:
    # The infra process runs from the pause image's rootfs (idmapped
    # layers) instead of the built-in one.
    with node(pause_image=True) as here:
        os.chmod(here.daemon.base, 0o711)
        config = in_prefix(here, "userns-pause", prefix)
        with_userns(config, POD_MODE)
        pod_id = here.run_pod(config)
        cid = here.run(pod_id, config,
                       with_userns(here.container_config("inside", IDLE), POD_MODE))
        here.wait_state(cid, api.CONTAINER_RUNNING)
        # The infra's sleep, seen from the container's PID namespace.
        assert b"sleep 86400" in here.exec(cid, "ps").stdout
        assert here.exec(cid, "cat", "/proc/1/uid_map").stdout.decode().split() == [
            "0", str(HOST_ID), "65536"]
        here.remove_pod(pod_id)
        assert no_leftovers(here, prefix) == []


def test_a_node_that_cannot_is_refused_leaving_nothing(prefix: str) -> None:
    # The daemon's base dir is left 0700 (mkdtemp): the mapped ids cannot
    # traverse it, so no handler advertises user namespaces and a pod
    # asking for its own is FAILED_PRECONDITION.
    with node() as here:
        status = here.daemon.runtime.Status(api.StatusRequest(), timeout=30)
        assert not [h.name for h in status.runtime_handlers if h.features.user_namespaces]
        config = in_prefix(here, "userns-cannot", prefix)
        config.linux.security_context.namespace_options.userns_options.CopyFrom(
            api.UserNamespace(mode=api.POD, uids=ONE, gids=ONE))
        with pytest.raises(grpc.RpcError) as caught:
            here.run_pod(config)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "o+x" in (caught.value.details() or "")
        assert not here.daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(),
                                                      timeout=10).items
        assert no_leftovers(here, prefix) == []
