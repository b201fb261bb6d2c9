"""Container and pod stats, and the CRI metrics, through the CRI socket.

One node for the module, with the writable layers re-measured every
0.2 s so a write shows up quickly. The pods:

- ``busy``: a container burning one core, one holding 50 MiB in a shell
  variable, one that wrote a 10 MiB file, and one created but never
  started;
- ``web``: a busybox httpd the test fetches a file from, for network bytes;
- ``quiet``: one idle container with other labels, for the filters.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from daemonlib import Daemon, poll_until
from podfixtures import IDLE, Node, node

from podvisor.proto import api_pb2 as api

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20
BURN = "trap 'exit 0' TERM; while :; do :; done"
# 50 MiB of "y\n" held by the shell: anonymous memory, in the working set.
HOLD = "trap 'exit 0' TERM; a=$(yes | head -c 52428800); echo held; sleep 86400 & wait"
WRITE = "trap 'exit 0' TERM; head -c 10485760 /dev/zero > /big; echo written; sleep 86400 & wait"
WEB_PORT = 8080
WEB = ("trap 'exit 0' TERM; mkdir -p /www && head -c 2097152 /dev/zero > /www/blob && "
       f"busybox httpd -f -p {WEB_PORT} -h /www & wait")


@dataclass
class Pods:
    n: Node
    busy: str
    web: str
    quiet: str
    burn: str
    hold: str
    write: str
    created: str
    server: str
    idle: str
    web_ip: str

    def list_stats(self, flt: api.ContainerStatsFilter | None = None) -> list[api.ContainerStats]:
        request = api.ListContainerStatsRequest(filter=flt) if flt else \
            api.ListContainerStatsRequest()
        return list(self.n.daemon.runtime.ListContainerStats(request, timeout=30).stats)

    def stats(self, container_id: str) -> api.ContainerStats:
        return self.n.daemon.runtime.ContainerStats(
            api.ContainerStatsRequest(container_id=container_id), timeout=30).stats

    def pod_stats(self, pod_id: str) -> api.PodSandboxStats:
        return self.n.daemon.runtime.PodSandboxStats(
            api.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=30).stats


@pytest.fixture(scope="module")
def p() -> Iterator[Pods]:
    with node(config="[podvisor.stats]\nlayer_usage_interval = 0.2\n"
                     "layer_usage_budget = 1.0\n") as n:
        busy_config = n.pod_config("busy")
        busy = n.run_pod(busy_config)
        burn = n.run(busy, busy_config, n.container_config("burn", BURN, labels={"role": "cpu"}))
        hold = n.run(busy, busy_config, n.container_config("hold", HOLD, labels={"role": "mem"}))
        write = n.run(busy, busy_config,
                      n.container_config("write", WRITE, labels={"role": "disk"}))
        created = n.create(busy, busy_config,
                           n.container_config("created", IDLE, labels={"role": "none"}))
        web_config = n.pod_config("web")
        web = n.run_pod(web_config)
        server = n.run(web, web_config, n.container_config("server", WEB, labels={"role": "web"}))
        quiet_config = n.pod_config("quiet")
        quiet_config.labels["tier"] = "quiet"
        quiet = n.run_pod(quiet_config)
        idle = n.run(quiet, quiet_config, n.container_config("idle", IDLE,
                                                             labels={"role": "cpu", "x": "y"}))
        for cid in (burn, hold, write, server, idle):
            n.wait_state(cid, api.CONTAINER_RUNNING)
        web_ip = n.pod_status(web).status.network.ip
        yield Pods(n, busy, web, quiet, burn, hold, write, created, server, idle, web_ip)


def ids(stats: list[api.ContainerStats]) -> set[str]:
    return {s.attributes.id for s in stats}


# --- ContainerStats and ListContainerStats -------------------------------------------


def test_a_busy_container_shows_rising_cpu_near_one_core(p: Pods) -> None:
    first = p.stats(p.burn)
    assert first.attributes.metadata.name == "burn"
    assert first.cpu.timestamp > 0 and first.memory.timestamp > 0
    time.sleep(1.5)
    second = p.stats(p.burn)
    used = second.cpu.usage_core_nano_seconds.value - first.cpu.usage_core_nano_seconds.value
    elapsed = second.cpu.timestamp - first.cpu.timestamp
    assert used > 0 and second.cpu.timestamp > first.cpu.timestamp
    assert second.cpu.HasField("usage_nano_cores")
    # One busy shell: about a core (2 cores here; other tests may share them).
    assert 0.4e9 < second.cpu.usage_nano_cores.value <= 1.1e9, second.cpu
    assert abs(second.cpu.usage_nano_cores.value - used * 1e9 / elapsed) < 0.2e9


def test_a_container_holding_50_mib_has_a_working_set_above_it(p: Pods) -> None:
    def held() -> api.ContainerStats | None:
        stats = p.stats(p.hold)
        return stats if stats.memory.working_set_bytes.value > 50 * MiB else None
    stats = poll_until(held, 30, interval=0.2, what="a 50 MiB working set")
    memory = stats.memory
    assert memory.usage_bytes.value >= memory.working_set_bytes.value
    assert memory.rss_bytes.value > 50 * MiB
    assert memory.page_faults.value > 0
    # No limit: nothing to be available against.
    assert not memory.HasField("available_bytes")


def test_a_10_mib_file_shows_in_the_writable_layer(p: Pods) -> None:
    def written() -> api.ContainerStats | None:
        stats = p.stats(p.write)
        return stats if stats.writable_layer.used_bytes.value > 10 * MiB else None
    stats = poll_until(written, 30, interval=0.2, what="10 MiB in the writable layer")
    layer = stats.writable_layer
    assert layer.inodes_used.value >= 2 and layer.timestamp > 0
    assert layer.fs_id.mountpoint.startswith("/")
    # The burner wrote nothing.
    assert p.stats(p.burn).writable_layer.used_bytes.value < 1 * MiB


def test_a_created_container_is_listed_with_zero_usage_and_its_layer(p: Pods) -> None:
    [stats] = p.list_stats(api.ContainerStatsFilter(id=p.created))
    assert stats.attributes.id == p.created and stats.attributes.labels["role"] == "none"
    assert stats.cpu.usage_core_nano_seconds.value == 0 and stats.cpu.timestamp > 0
    assert stats.memory.working_set_bytes.value == 0 and stats.memory.timestamp > 0
    assert stats.HasField("writable_layer") and stats.writable_layer.fs_id.mountpoint


def test_filters_return_exactly_the_matching_containers(p: Pods) -> None:
    everyone = {p.burn, p.hold, p.write, p.created, p.server, p.idle}
    assert everyone <= ids(p.list_stats())
    assert ids(p.list_stats(api.ContainerStatsFilter(id=p.hold))) == {p.hold}
    assert ids(p.list_stats(api.ContainerStatsFilter(id=p.hold[:12]))) == {p.hold}
    assert ids(p.list_stats(api.ContainerStatsFilter(pod_sandbox_id=p.busy))) == \
        {p.burn, p.hold, p.write, p.created}
    assert ids(p.list_stats(api.ContainerStatsFilter(label_selector={"role": "cpu"}))) == \
        {p.burn, p.idle}
    assert ids(p.list_stats(api.ContainerStatsFilter(
        label_selector={"role": "cpu", "x": "y"}))) == {p.idle}
    assert ids(p.list_stats(api.ContainerStatsFilter(
        pod_sandbox_id=p.quiet, label_selector={"role": "web"}))) == set()
    assert p.list_stats(api.ContainerStatsFilter(id="0" * 64)) == []


def test_unknown_or_missing_ids_are_clear_errors(p: Pods) -> None:
    runtime = p.n.daemon.runtime
    for call, request, code in (
            (runtime.ContainerStats, api.ContainerStatsRequest(container_id="f" * 64),
             grpc.StatusCode.NOT_FOUND),
            (runtime.ContainerStats, api.ContainerStatsRequest(),
             grpc.StatusCode.INVALID_ARGUMENT),
            (runtime.PodSandboxStats, api.PodSandboxStatsRequest(pod_sandbox_id="f" * 64),
             grpc.StatusCode.NOT_FOUND),
            (runtime.PodSandboxStats, api.PodSandboxStatsRequest(),
             grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        assert caught.value.code() == code, caught.value.details()


# --- PodSandboxStats and ListPodSandboxStats -----------------------------------------


def test_pod_stats_show_network_bytes_after_traffic_to_the_pod(p: Pods) -> None:
    before = p.pod_stats(p.web).linux.network
    url = f"http://{p.web_ip}:{WEB_PORT}/blob"
    body = poll_until(lambda: urllib.request.urlopen(url, timeout=10).read(), 20,
                      interval=0.2, what="httpd answering")
    assert len(body) == 2 * MiB
    after = p.pod_stats(p.web).linux.network
    assert after.default_interface.name == "eth0"
    assert [i.name for i in after.interfaces] == ["eth0"]
    sent = after.default_interface.tx_bytes.value - before.default_interface.tx_bytes.value
    received = after.default_interface.rx_bytes.value - before.default_interface.rx_bytes.value
    assert sent >= 2 * MiB and received > 0
    assert after.timestamp > before.timestamp


def test_pod_stats_hold_the_pod_cgroup_and_its_containers(p: Pods) -> None:
    stats = poll_until(lambda: (s := p.pod_stats(p.busy)).linux.memory.working_set_bytes.value
                       > 50 * MiB and s, 30, interval=0.2, what="the pod's working set")
    assert stats.attributes.id == p.busy and stats.attributes.metadata.name == "busy"
    linux = stats.linux
    assert linux.cpu.usage_core_nano_seconds.value > 0 and linux.cpu.timestamp > 0
    # burn and hold's shells and sleeps, and the monitors beside them.
    assert linux.process.process_count.value >= 3
    assert {c.attributes.id for c in linux.containers} == {p.burn, p.hold, p.write, p.created}
    listed = p.n.daemon.runtime.ListPodSandboxStats(api.ListPodSandboxStatsRequest(
        filter=api.PodSandboxStatsFilter(label_selector={"tier": "quiet"})), timeout=30).stats
    assert [s.attributes.id for s in listed] == [p.quiet]
    assert [c.attributes.id for c in listed[0].linux.containers] == [p.idle]
    everyone = p.n.daemon.runtime.ListPodSandboxStats(api.ListPodSandboxStatsRequest(),
                                                      timeout=30).stats
    assert {s.attributes.id for s in everyone} >= {p.busy, p.web, p.quiet}


# --- metrics ----------------------------------------------------------------------------

REQUIRED = ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
            "container_memory_usage_bytes", "container_memory_rss",
            "container_network_receive_bytes_total", "container_network_transmit_bytes_total",
            "container_fs_usage_bytes", "container_processes", "container_oom_events_total",
            "container_start_time_seconds", "container_last_seen")


def test_metric_descriptors_name_the_cadvisor_metrics(p: Pods) -> None:
    found = p.n.daemon.runtime.ListMetricDescriptors(api.ListMetricDescriptorsRequest(),
                                                     timeout=10).descriptors
    by_name = {d.name: d for d in found}
    assert set(REQUIRED) <= set(by_name)
    assert len(by_name) == len(found)
    for d in found:
        assert d.help and list(d.label_keys[:6]) == ["container", "id", "image", "name",
                                                     "namespace", "pod"]
    assert list(by_name["container_network_receive_bytes_total"].label_keys)[-1] == "interface"


def test_pod_metrics_carry_values_with_the_descriptors_labels(p: Pods) -> None:
    runtime = p.n.daemon.runtime
    keys = {d.name: len(d.label_keys) for d in runtime.ListMetricDescriptors(
        api.ListMetricDescriptorsRequest(), timeout=10).descriptors}

    def hold_metrics() -> dict[str, api.Metric] | None:
        pods = runtime.ListPodSandboxMetrics(api.ListPodSandboxMetricsRequest(),
                                             timeout=30).pod_metrics
        [busy] = [m for m in pods if m.pod_sandbox_id == p.busy]
        [hold] = [c for c in busy.container_metrics if c.container_id == p.hold]
        values = {m.name: m for m in hold.metrics}
        ws = values.get("container_memory_working_set_bytes")
        return values if ws is not None and ws.value.value > 50 * MiB else None

    values = poll_until(hold_metrics, 30, interval=0.2, what="the hold container's metrics")
    for name in set(REQUIRED) - {"container_network_receive_bytes_total",
                                 "container_network_transmit_bytes_total"}:
        assert name in values, name
    for metric in values.values():
        assert len(metric.label_values) == keys[metric.name], metric
        assert metric.timestamp > 0
    labels = list(values["container_memory_rss"].label_values)
    assert labels[0] == "hold" and labels[1] == p.hold and labels[4:] == ["test", "busy"]
    assert values["container_processes"].value.value >= 2  # the shell and its sleep
    assert values["container_start_time_seconds"].value.value > 1_700_000_000
    assert values["container_last_seen"].value.value >= \
        values["container_start_time_seconds"].value.value


def test_pod_metrics_count_the_pods_network(p: Pods) -> None:
    url = f"http://{p.web_ip}:{WEB_PORT}/blob"
    poll_until(lambda: urllib.request.urlopen(url, timeout=10).read(), 20, interval=0.2,
               what="httpd answering")
    pods = p.n.daemon.runtime.ListPodSandboxMetrics(api.ListPodSandboxMetricsRequest(),
                                                    timeout=30).pod_metrics
    [web] = [m for m in pods if m.pod_sandbox_id == p.web]
    sent = {tuple(m.label_values): m.value.value for m in web.metrics
            if m.name == "container_network_transmit_bytes_total"}
    [(labels, value)] = sent.items()
    assert labels[0] == "POD" and labels[-1] == "eth0" and value >= 2 * MiB
    [server] = web.container_metrics
    assert server.container_id == p.server


def test_metrics_follow_the_included_groups(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(extra='[podvisor.stats]\nincluded_pod_metrics = ["cpu"]\n')
    found = {d.name for d in daemon.runtime.ListMetricDescriptors(
        api.ListMetricDescriptorsRequest(), timeout=10).descriptors}
    assert "container_cpu_usage_seconds_total" in found
    assert "container_last_seen" in found
    assert not {"container_memory_rss", "container_network_receive_bytes_total"} & found
    assert daemon.runtime.ListPodSandboxMetrics(api.ListPodSandboxMetricsRequest(),
                                                timeout=10).pod_metrics == []
