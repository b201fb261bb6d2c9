"""The supervisor's stats arithmetic: the CPU rate between samples, and the
metric catalogue's groups. The figures themselves are tested through the
CRI socket (test_stats.py)."""

from __future__ import annotations

import msgspec

from podvisor.proto.stats import CgroupSample
from podvisor.supervisor.config import METRIC_GROUPS
from podvisor.supervisor.rpc import metric_build
from podvisor.supervisor.rpc.stats_build import MIN_WINDOW_NS, CpuRates

S = 1_000_000_000
ZERO = CgroupSample(
    timestamp_ns=0, cpu_usage_ns=0, cpu_user_ns=0, cpu_system_ns=0, cfs_periods=0,
    cfs_throttled_periods=0, cfs_throttled_ns=0, memory_usage_bytes=0,
    memory_working_set_bytes=0, memory_rss_bytes=0, memory_cache_bytes=0,
    memory_mapped_file_bytes=0, memory_kernel_bytes=0, memory_max_usage_bytes=None,
    memory_failcnt=0, memory_limit_bytes=None, page_faults=0, major_page_faults=0, oom_kills=0,
    swap_usage_bytes=None, swap_limit_bytes=None, pids_current=None, pids_max=None,
    io_read_bytes=0, io_write_bytes=0, io_reads=0, io_writes=0)


def at(seconds: float, cpu_seconds: float) -> CgroupSample:
    return msgspec.structs.replace(ZERO, timestamp_ns=int(seconds * S),
                                   cpu_usage_ns=int(cpu_seconds * S))


def test_the_first_sample_has_no_rate_and_the_next_one_does() -> None:
    rates = CpuRates()
    assert rates.rate("c", at(100, 5)) is None
    assert rates.rate("c", at(102, 6)) == S // 2  # one second of CPU in two
    assert rates.rate("c", at(112, 16)) == S


def test_a_quick_second_caller_keeps_the_older_baseline() -> None:
    rates = CpuRates()
    rates.rate("c", at(100, 0))
    assert rates.rate("c", at(110, 10)) == S
    # 10 ms later: measured against t=110 only if the window were kept short.
    assert rates.rate("c", at(110.01, 10.005)) == S // 2
    assert MIN_WINDOW_NS > 0.01 * S


def test_a_counter_that_goes_back_starts_over() -> None:
    rates = CpuRates()
    rates.rate("c", at(100, 50))
    assert rates.rate("c", at(110, 1)) is None  # a new cgroup under the same id
    assert rates.rate("c", at(120, 11)) == S


def test_forgotten_objects_are_dropped() -> None:
    rates = CpuRates()
    rates.rate("old", at(0, 0))
    rates.rate("new", at(1000, 0))
    rates.rate("new", at(1002, 1))
    assert len(rates) == 1


def test_groups_select_descriptors_and_last_seen_is_always_on() -> None:
    every = {d.name for d in metric_build.descriptors(METRIC_GROUPS)}
    assert len(every) == len(metric_build.descriptors(METRIC_GROUPS))
    assert {d.name for d in metric_build.descriptors(())} == {"container_last_seen"}
    cpu = {d.name for d in metric_build.descriptors(("cpu",))}
    assert cpu == {n for n in every if n.startswith("container_cpu_")} | {"container_last_seen"}
    network = {d.name for d in metric_build.descriptors(("network",))}
    assert len(network) == 9 and all("network" in n for n in network - {"container_last_seen"})
