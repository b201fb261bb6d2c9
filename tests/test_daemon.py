"""The daemon answers Version, Status and RuntimeConfig over its socket, and
reports its workers through `podvisor status` and /metrics."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import stat
import urllib.request

import grpc
import pytest
from daemonlib import Daemon, poll_until

from podvisor.proto import api_pb2 as api


def test_version_over_the_socket(daemon: Daemon) -> None:
    reply = daemon.runtime.Version(api.VersionRequest(version="v1"), timeout=10)
    assert reply.runtime_name == "podvisor"
    assert reply.runtime_api_version == "v1"
    assert reply.version == "0.1.0"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", reply.runtime_version)


def test_socket_is_mode_0660(daemon: Daemon) -> None:
    mode = os.stat(daemon.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660
    for pool in ("image", "storage", "runtime", "net"):
        assert stat.S_IMODE(os.stat(daemon.runroot / "bus" / f"{pool}.sock").st_mode) == 0o600


def test_status_reports_runtime_ready_and_network_not_ready_without_cni_config(
        daemon: Daemon) -> None:
    reply = daemon.runtime.Status(api.StatusRequest(verbose=True), timeout=10)
    conditions = {c.type: c for c in reply.status.conditions}
    assert conditions["RuntimeReady"].status is True
    network = conditions["NetworkReady"]
    assert network.status is False
    assert network.reason == "NetworkPluginNotReady"
    assert str(daemon.cni_dir) in network.message
    handlers = {h.name for h in reply.runtime_handlers}
    assert {"runc", "crun", ""} <= handlers
    # The default, crun, applies recursive read-only mounts though its 1.8
    # has no `features` to say so (handlers.py); this host's kernel is > 5.12.
    rro = {h.name: h.features.recursive_read_only_mounts for h in reply.runtime_handlers}
    assert rro[""] is rro["crun"] is True
    runtime_info = json.loads(reply.info["runtime"])
    assert runtime_info["default_runtime"] == "crun"
    pools = json.loads(reply.info["pools"])
    assert pools["runtime"] == {"size": 2, "ready": 2, "fatal": False, "on_demand": False}
    # No call has streamed on this daemon yet: the stream pool says so, not down.
    stream = pools["stream"]
    assert (stream["ready"], stream["fatal"], stream["on_demand"]) == (0, False, True)
    assert stream["note"].startswith("not started (on demand)")
    # Advertised exactly as implemented: supplemental groups policies are
    # applied (spec_user.py); mount options and user namespaces are not.
    assert reply.features.supplemental_groups_policy is True
    assert reply.features.mount_options is False
    assert reply.features.user_namespaces_host_network is False


def test_status_turns_network_ready_when_a_config_appears(daemon: Daemon) -> None:
    daemon.cni_dir.mkdir(exist_ok=True)
    conf = daemon.cni_dir / "10-test.conflist"
    conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": "testnet",
                                "plugins": [{"type": "loopback"}]}))
    try:
        def network_ready() -> bool:
            reply = daemon.runtime.Status(api.StatusRequest(), timeout=10)
            return any(c.type == "NetworkReady" and c.status for c in reply.status.conditions)
        poll_until(network_ready, 5, what="NetworkReady=true")
    finally:
        conf.unlink()


def test_runtime_config_reports_the_cgroup_driver(daemon: Daemon) -> None:
    reply = daemon.runtime.RuntimeConfig(api.RuntimeConfigRequest(), timeout=10)
    assert reply.linux.cgroup_driver == api.CGROUPFS


def test_podvisor_status_lists_every_worker(daemon: Daemon) -> None:
    out = daemon.cli("status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split() == ["POOL", "INDEX", "PID", "STATE", "UPTIME", "RESTARTS",
                                "INFLIGHT", "RSS", "CPU%"]
    assert lines[-1].startswith("streaming: not started (on demand)"), lines[-1]
    rows = [line.split() for line in lines[2:-1]]
    assert sorted((r[0], r[1]) for r in rows) == sorted(
        [("image", "1"), ("storage", "1"), ("runtime", "1"), ("runtime", "2"),
         ("net", "1"), ("net", "2"), ("stream", "1")])
    assert {r[0]: r[3] for r in rows if r[0] != "stream"} == dict.fromkeys(
        ("image", "storage", "runtime", "net"), "READY")
    assert [r[2:4] for r in rows if r[0] == "stream"] == [["-", "NOT_STARTED"]]

    doc = json.loads(daemon.cli("status", "--json").stdout)
    assert doc["streaming"]["started"] is False
    assert doc["pools"]["stream"]["on_demand"] is True
    for worker in doc["workers"]:
        if worker["pool"] == "stream":
            assert worker["pid"] is None and worker["state"] == "NOT_STARTED"
            continue
        assert worker["pid"] > 0 and worker["rss"] > 0
        assert set(worker) >= {"pool", "index", "pid", "state", "uptime", "restarts",
                               "inflight", "rss", "cpu_percent"}


def fetch_metrics(daemon: Daemon, **headers: str) -> tuple[dict[str, str], bytes]:
    addr = (daemon.runroot / "health.addr").read_text().strip()
    request = urllib.request.Request(f"http://{addr}/metrics",
                                     headers={k.replace("_", "-"): v for k, v in headers.items()})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return dict(resp.headers.items()), resp.read()


def test_metrics_negotiate_openmetrics_and_gzip(daemon: Daemon) -> None:
    plain_headers, plain = fetch_metrics(daemon)
    assert plain_headers["Content-Type"].startswith("text/plain")
    assert b"podvisor_workers_up" in plain and "Content-Encoding" not in plain_headers
    om_headers, om = fetch_metrics(daemon, Accept="application/openmetrics-text")
    assert om_headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.rstrip().endswith(b"# EOF")
    gz_headers, packed = fetch_metrics(daemon, Accept_Encoding="gzip")
    assert gz_headers["Content-Encoding"] == "gzip"
    assert b"podvisor_workers_up" in gzip.decompress(packed)


def test_metrics_count_rpcs_by_code_and_workers_up(daemon: Daemon) -> None:
    daemon.runtime.Version(api.VersionRequest(), timeout=10)
    with contextlib.suppress(grpc.RpcError):
        daemon.runtime.Attach(api.AttachRequest(container_id="x", stdout=True), timeout=10)
    text = daemon.metrics()
    assert re.search(r'podvisor_rpc_requests_total\{code="OK",method="Version"\} [1-9]', text)
    assert re.search(
        r'podvisor_rpc_requests_total\{code="NOT_FOUND",method="Attach"\} [1-9]', text)
    assert 'podvisor_rpc_duration_seconds_bucket{le="0.001",method="Version"}' in text
    assert 'podvisor_workers_up{pool="runtime"} 2.0' in text
    assert 'podvisor_worker_restarts_total{pool="net"} 0.0' in text
    assert 'podvisor_stream_sessions{kind="exec"} 0.0' in text
    # Not started (on demand) is neither up nor down: a gauge of its own.
    assert 'podvisor_workers_not_started{pool="stream"} 1.0' in text
    assert 'podvisor_workers_not_started{pool="runtime"} 0.0' in text


def test_logged_requests_carry_a_request_id(daemon: Daemon) -> None:
    with contextlib.suppress(grpc.RpcError):
        daemon.runtime.ContainerStatus(api.ContainerStatusRequest(container_id="nope"),
                                       timeout=10)
    log = daemon.log_path.read_text()
    assert re.search(r"\[ContainerStatus req=[0-9a-f]{12}\] .*ContainerStatus failed: "
                     r"NOT_FOUND: container nope not found", log)
    # The worker logs the same request under the bus request id.
    assert re.search(r"\[runtime worker \d\] \[req=[0-9a-f]{12}\]", log)


def test_podvisor_config_prints_the_effective_configuration(daemon: Daemon) -> None:
    out = daemon.cli("--log-level", "warn", "config")
    assert out.returncode == 0, out.stderr
    assert 'log_level = "warn"' in out.stdout
    assert f'runroot = "{daemon.runroot}"' in out.stdout
    assert f'listen = "{daemon.socket}"' in out.stdout


def test_bad_config_stops_the_start_naming_key_and_file(make_daemon) -> None:  # type: ignore[no-untyped-def]
    d = make_daemon(start=False)
    (d.base / "conf.d" / "50-bad.toml").write_text("[podvisor.workers]\nimage = 0\n")
    out = d.cli("run")
    assert out.returncode == 2
    assert "50-bad.toml" in out.stderr and "podvisor.workers.image" in out.stderr


def test_second_daemon_on_the_same_run_dir_is_refused(daemon: Daemon) -> None:
    out = daemon.cli("run")
    assert out.returncode == 1
    assert f"another podvisor (pid {daemon.pid}) is running" in out.stderr


def test_update_runtime_config_accepts_the_pod_cidr(daemon: Daemon) -> None:
    request = api.UpdateRuntimeConfigRequest(runtime_config=api.RuntimeConfig(
        network_config=api.NetworkConfig(pod_cidr="10.244.1.0/24")))
    daemon.runtime.UpdateRuntimeConfig(request, timeout=10)
    assert "pod CIDR 10.244.1.0/24" in daemon.log_path.read_text()


def test_systemd_driver_without_systemd_stops_the_start_naming_the_setting(
        make_daemon) -> None:  # type: ignore[no-untyped-def]
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs here: the systemd driver is served")
    d = make_daemon(start=False)
    (d.base / "conf.d" / "50-driver.toml").write_text(
        '[podvisor.runtime]\ncgroup_manager = "systemd"\nconmon_cgroup = "system.slice"\n')
    out = d.cli("run")
    assert out.returncode == 1
    assert "cgroup_manager" in out.stderr and "systemd is not running" in out.stderr
    assert not d.socket.exists()
