"""workers/opthreads.py: op threads start as ops come and end once idle.

What a worker's threads do under load is seen through the CRI socket in
test_worker_memory.py; these cases pin the pool's own rules.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, Future

import pytest
from daemonlib import poll_until

from podvisor.workers.opthreads import OpThreads

pytestmark = pytest.mark.timeout(60)


def test_sequential_ops_reuse_one_thread() -> None:
    pool = OpThreads(16, "t")
    try:
        for i in range(50):
            assert pool.submit(lambda x: x * 2, i).result(timeout=10) == i * 2
        assert pool.threads == 1
    finally:
        pool.shutdown()


def test_concurrent_ops_get_threads_up_to_the_cap_and_the_rest_wait() -> None:
    pool = OpThreads(4, "t")
    gate = threading.Event()
    try:
        futures = [pool.submit(gate.wait, 30) for _ in range(6)]
        assert poll_until(lambda: sum(f.running() for f in futures) == 4, 10,
                          what="four ops running")
        assert pool.threads == 4
        assert sum(not f.running() and not f.done() for f in futures) == 2
        gate.set()
        assert all(f.result(timeout=10) for f in futures)
        assert pool.threads == 4
    finally:
        gate.set()
        pool.shutdown()


def burst(pool: OpThreads, n: int) -> None:
    """``n`` ops held at once until the pool runs ``n`` threads, then released."""
    gate = threading.Event()
    futures = [pool.submit(gate.wait, 30) for _ in range(n)]
    poll_until(lambda: pool.threads == n, 10, what=f"{n} threads")
    gate.set()
    for future in futures:
        future.result(timeout=10)


def test_idle_threads_end_and_the_pool_grows_again() -> None:
    pool = OpThreads(4, "t", idle_exit=0.05)
    try:
        burst(pool, 3)
        poll_until(lambda: pool.threads == 0, 10, what="every idle thread gone")
        # A held op, so its thread cannot idle out before it is counted.
        gate = threading.Event()
        again = pool.submit(gate.wait, 30)
        poll_until(again.running, 10, what="the op on a new thread")
        assert pool.threads == 1
        gate.set()
        assert again.result(timeout=10) is True
    finally:
        pool.shutdown()


def test_an_op_error_reaches_the_caller_and_the_thread_serves_on() -> None:
    pool = OpThreads(2, "t")
    try:
        def fail() -> None:
            raise KeyError("boom")
        with pytest.raises(KeyError):
            pool.submit(fail).result(timeout=10)
        assert pool.submit(lambda: 7).result(timeout=10) == 7
        assert pool.threads == 1
    finally:
        pool.shutdown()


def test_shutdown_cancels_queued_ops_waits_for_running_ones_and_refuses_new() -> None:
    pool = OpThreads(1, "t")
    gate = threading.Event()
    running = pool.submit(gate.wait, 30)
    poll_until(running.running, 10, what="the first op running")
    queued: Future[bool] = pool.submit(gate.wait, 30)
    closer = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True})
    closer.start()
    poll_until(queued.cancelled, 10, what="the queued op cancelled")
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert running.result(timeout=1) is True
    with pytest.raises(CancelledError):
        queued.result(timeout=1)
    assert pool.threads == 0


def test_a_light_load_is_served_by_the_thread_idle_last_and_the_others_end() -> None:
    # Round-robin hand-out would keep every thread alive: each would get an op
    # before its idle_exit ran out.
    pool = OpThreads(8, "t", idle_exit=0.5)
    try:
        burst(pool, 4)
        # Ops one at a time, well within idle_exit of each other, until the
        # surplus threads have ended.
        poll_until(lambda: pool.submit(lambda: True).result(10) and pool.threads == 1, 20,
                   interval=0.05, what="one thread left")
        assert pool.threads == 1
    finally:
        pool.shutdown()


def test_an_op_submitted_as_the_last_thread_times_out_is_still_served() -> None:
    # The thread's idle wait ends and it leaves at the moment ops arrive; each
    # op must find a thread (a new one if need be), never a backlog nobody
    # serves. Many rounds, each timed to land near the idle exit.
    pool = OpThreads(1, "t", idle_exit=0.002)
    try:
        for _ in range(300):
            assert pool.submit(lambda: True).result(timeout=10) is True
            time.sleep(0.002)
    finally:
        pool.shutdown()
