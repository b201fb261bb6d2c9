"""The stream worker starts with the first Exec, Attach or PortForward.

Through the CRI socket, on a real node: a daemon no call has streamed on
has no stream worker process and says so (``/status``, the CLI, CRI
Status's verbose info, ``/metrics``) as "not started (on demand)", not as
down; the first Exec starts one worker, however many arrive at once, and
succeeds; a started worker killed with -9 is restarted like any other; a
start that fails is UNAVAILABLE for its call, and the next call starts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from daemonlib import Daemon, children_of, poll_until
from podfixtures import IDLE, Node, node
from streamclient import run_command, succeeded

from podvisor.proto import api_pb2 as api

pytestmark = pytest.mark.timeout(240)

STREAM_TITLE = b"podvisor: stream worker"
PARALLEL = 8


@dataclass
class Shell:
    n: Node
    id: str

    @property
    def daemon(self) -> Daemon:
        return self.n.daemon

    def exec_url(self, *cmd: str) -> str:
        return str(self.daemon.runtime.Exec(api.ExecRequest(
            container_id=self.id, cmd=list(cmd), stdout=True, stderr=True),
            timeout=60).url)

    def echo(self, word: str) -> bool:
        result = run_command("ws-v5", self.exec_url("echo", "-n", word))
        assert result.stdout == word.encode() and succeeded(result), result
        return True


@contextlib.contextmanager
def shell_node(config: str = "", **workers: float) -> Iterator[Shell]:
    """A node with one running shell container; ``config``: more TOML,
    ``workers``: more ``[podvisor.workers]`` keys."""
    with node(workers={"runtime": 1, "storage": 1, **workers}, config=config) as n:
        pod = n.pod_config("ondemand")
        pod_id = n.run_pod(pod)
        cid = n.run(pod_id, pod, n.container_config("shell", IDLE))
        n.wait_state(cid, api.CONTAINER_RUNNING)
        yield Shell(n, cid)


def children_titled(daemon: Daemon, title: bytes) -> list[int]:
    """The supervisor's children whose process title starts with ``title``."""
    return [pid for pid, cmdline in children_of(daemon.pid).items()
            if cmdline.startswith(title)]


def stream_slot(daemon: Daemon) -> dict[str, Any]:
    worker: dict[str, Any] = daemon.workers()[("stream", 1)]
    return worker


def test_no_stream_worker_until_the_first_exec_then_one_for_parallel_first_calls() -> None:
    with shell_node() as sh:
        daemon = sh.daemon
        # Pods and containers ran, Status was asked: still no stream worker,
        # and every report says it is not started rather than down.
        daemon.runtime.Status(api.StatusRequest(), timeout=10)
        assert children_titled(daemon, STREAM_TITLE) == []
        slot = stream_slot(daemon)
        assert (slot["pid"], slot["state"], slot["restarts"]) == (None, "NOT_STARTED", 0)
        doc = daemon.status()
        assert doc["streaming"]["started"] is False
        assert doc["pools"]["stream"]["note"].startswith("not started (on demand)")
        info = daemon.runtime.Status(api.StatusRequest(verbose=True), timeout=10).info
        assert json.loads(info["pools"])["stream"]["on_demand"] is True
        conditions = daemon.runtime.Status(api.StatusRequest(), timeout=10).status.conditions
        assert all(c.status for c in conditions if c.type == "RuntimeReady")
        metrics = daemon.metrics()
        assert 'podvisor_workers_not_started{pool="stream"} 1.0' in metrics
        assert 'podvisor_workers_fatal{pool="stream"} 0.0' in metrics
        assert re.search(r"^streaming: not started \(on demand\)", daemon.cli("status").stdout,
                         re.M)
        # Asking for the status did not start it either.
        assert children_titled(daemon, STREAM_TITLE) == []

        # Parallel first calls: every one gets a URL that works, from one worker.
        with ThreadPoolExecutor(PARALLEL) as pool:
            urls = list(pool.map(lambda i: sh.exec_url("echo", "-n", f"w{i}"),
                                 range(PARALLEL)))
        for i, url in enumerate(urls):
            result = run_command("ws-v5", url)
            assert result.stdout == f"w{i}".encode() and succeeded(result), result
        slot = stream_slot(daemon)
        assert slot["state"] == "READY" and slot["restarts"] == 0
        assert children_titled(daemon, STREAM_TITLE) == [slot["pid"]]
        doc = daemon.status()
        assert doc["streaming"]["url"].startswith("http://127.0.0.1:")
        assert "note" not in doc["pools"]["stream"]
        assert 'podvisor_workers_not_started{pool="stream"} 0.0' in daemon.metrics()
        # It stays: the next call is served by the same process.
        assert sh.echo("again") and stream_slot(daemon)["pid"] == slot["pid"]


def test_a_started_stream_worker_killed_is_restarted_and_serves() -> None:
    with shell_node() as sh:
        daemon = sh.daemon
        assert sh.echo("first")
        victim = stream_slot(daemon)["pid"]
        os.kill(victim, signal.SIGKILL)

        def restarted() -> bool:
            slot = stream_slot(daemon)
            return slot["pid"] not in (None, victim) and slot["state"] == "READY"
        poll_until(restarted, 30, what="the stream worker restarted")
        assert stream_slot(daemon)["restarts"] == 1
        assert sh.echo("after") and children_titled(daemon, STREAM_TITLE) == [
            stream_slot(daemon)["pid"]]
        for cid in (sh.id,):
            assert sh.n.status(cid).state == api.CONTAINER_RUNNING


def test_a_failed_start_is_unavailable_and_the_next_call_starts_it() -> None:
    # The streaming server's port is taken: the worker cannot bind it and
    # exits before READY.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        with shell_node(f"[podvisor.stream]\nport = {port}\n") as sh:
            with pytest.raises(grpc.RpcError) as failed:
                sh.exec_url("true")
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            message = failed.value.details() or ""
            assert "could not be started" in message and "next call tries again" in message
            slot = stream_slot(sh.daemon)
            assert slot["state"] == "NOT_STARTED" and slot["pid"] is None
            assert children_titled(sh.daemon, STREAM_TITLE) == []
            blocker.close()
            assert sh.echo("now")
            assert stream_slot(sh.daemon)["state"] == "READY"
    finally:
        blocker.close()


def test_stream_on_demand_false_starts_it_with_the_daemon() -> None:
    with shell_node(stream_on_demand=False) as sh:
        slot = stream_slot(sh.daemon)
        assert slot["state"] == "READY" and slot["pid"] is not None
        assert children_titled(sh.daemon, STREAM_TITLE) == [slot["pid"]]
        assert sh.daemon.status()["pools"]["stream"]["on_demand"] is False
        assert sh.echo("eager")


def zygote_running(daemon: Daemon) -> bool:
    """A worker zygote, titled, or still importing under its exec'd name."""
    execd = f"{sys.executable}\0-m\0podvisor.workers.zygote".encode()
    return bool(children_titled(daemon, b"podvisor: worker zygote")
                or children_titled(daemon, execd))


def test_a_first_exec_after_the_zygote_left_starts_no_zygote_and_disturbs_no_worker() -> None:
    # The zygote has exited (idle) by the first Exec, as on any node that
    # streams a minute after its start. A new zygote made for this one fork
    # would exit a minute later and leave the stream worker alone with
    # every pool's imports: the worker is exec'd instead, and nothing else
    # is touched.
    with shell_node(zygote_idle_exit=0.5) as sh:
        daemon = sh.daemon
        poll_until(lambda: not zygote_running(daemon), 15, what="the idle zygote gone")
        before = {key: (w["pid"], w["restarts"]) for key, w in daemon.workers().items()
                  if key[0] != "stream"}
        assert sh.echo("late")
        assert not zygote_running(daemon)
        slot = stream_slot(daemon)
        assert slot["state"] == "READY" and children_titled(daemon, STREAM_TITLE) == [
            slot["pid"]]
        after = {key: (w["pid"], w["restarts"]) for key, w in daemon.workers().items()
                 if key[0] != "stream"}
        assert after == before


def test_a_first_port_forward_starts_it_too() -> None:
    with shell_node() as sh:
        daemon = sh.daemon
        [pod] = daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items
        url = daemon.runtime.PortForward(api.PortForwardRequest(
            pod_sandbox_id=pod.id, port=[80]), timeout=60).url
        assert "/portforward/" in url
        worker = stream_slot(daemon)
        assert worker["state"] == "READY" and worker["restarts"] == 0
        # Attach is served by the same worker.
        url = daemon.runtime.Attach(api.AttachRequest(
            container_id=sh.id, stdout=True, stderr=True), timeout=60).url
        assert "/attach/" in url and stream_slot(daemon)["pid"] == worker["pid"]
