"""workers/locks.py: what the image pool added to the shared flock module.

The per-object basics (exclusion, death of a holder, fds handed to a child,
a waiter following an unlinked file) are tested with the net pool's pod
locks in test_net_state.py; here: the ``wait`` callback, and files that are
their own lock (``claim`` and ``sweep``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from podvisor.proto.errors import DeadlineExceeded
from podvisor.workers import locks


class GaveUp(Exception):
    """What a caller's ``wait`` raises when its request is cancelled."""


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_wait_paces_the_polls_and_can_give_up(tmp_path: Path) -> None:
    held = locks.acquire(str(tmp_path), "obj", time.monotonic() + 5)
    pauses: list[float] = []

    def wait(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            raise GaveUp("cancelled")
        time.sleep(seconds)

    before = open_fds()
    with pytest.raises(GaveUp):
        locks.acquire(str(tmp_path), "obj", time.monotonic() + 60, wait=wait)
    assert pauses == sorted(pauses) and all(0 < p <= locks.MAX_DELAY for p in pauses)
    assert open_fds() == before  # a waiter that gave up keeps no descriptor
    held.release()


def test_wait_never_runs_past_the_deadline_which_names_the_object(tmp_path: Path) -> None:
    held = locks.acquire(str(tmp_path), "obj", time.monotonic() + 5)
    deadline = time.monotonic() + 0.2
    late: list[float] = []

    def wait(seconds: float) -> None:
        late.append(time.monotonic() + seconds - deadline)
        time.sleep(seconds)

    busy = r"^blob b is busy \(a puller holds .*obj\.lock\) and the deadline passed$"
    with pytest.raises(DeadlineExceeded, match=busy):
        locks.acquire(str(tmp_path), "obj", deadline, "blob b", holder="a puller", wait=wait)
    assert late and max(late) <= 0.01
    held.release()


def test_claim_holds_a_file_and_sweep_spares_it_until_its_owner_goes(tmp_path: Path) -> None:
    owned = locks.claim(str(tmp_path / "a.lease"), mode=0o640, flags=os.O_APPEND)
    (tmp_path / "dead.lease").write_text("")
    (tmp_path / "other.partial").write_text("")
    assert os.stat(owned.path).st_mode & 0o777 == 0o640 & ~_umask()
    assert locks.sweep(str(tmp_path), ".lease") == ["dead.lease"]
    assert sorted(os.listdir(tmp_path)) == ["a.lease", "other.partial"]
    owned.release()
    assert locks.sweep(str(tmp_path), ".lease") == ["a.lease"]
    assert os.listdir(tmp_path) == ["other.partial"]


def test_a_claim_waits_out_a_sweeper_and_ends_on_a_named_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A sweeper holds the owner's new file for an instant, to delete it as
    # abandoned: the owner must not end up holding a file without a name.
    sweeper = locks.try_acquire(str(tmp_path), "a")
    assert sweeper is not None
    polled = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        polled.set()
        real_sleep(seconds)

    monkeypatch.setattr(locks.time, "sleep", sleep)
    got: list[locks.ObjectLock] = []
    owner = threading.Thread(target=lambda: got.append(locks.claim(sweeper.path)))
    owner.start()
    assert polled.wait(10)  # the owner found the file held
    assert not got
    sweeper.release(unlink=True)
    owner.join(10)
    [held] = got
    assert os.fstat(held.fd).st_ino == os.stat(sweeper.path).st_ino
    held.release(unlink=True)
    assert os.listdir(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
