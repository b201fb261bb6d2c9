"""The runtime pool's change feed on disk (workers/runtime/changes.py): the
journal the ops write, conmon's exit files beside it, and the long poll
over both. The whole path, from an op to a GetContainerEvents stream, is
tests/test_pods.py::test_container_events_stream."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from podvisor.workers.runtime import changes
from podvisor.workers.runtime.changes import Change, Journal

POD = "p" * 64
CID = "c" * 64


def never() -> None:
    pass


def journal(tmp_path: Path) -> Journal:
    (tmp_path / "exits").mkdir()
    return Journal(str(tmp_path / "changes"), str(tmp_path / "exits"))


def poll(j: Journal, cursor: int = 0, recent: set[str] | None = None,
         wait: float = 0.0) -> list[changes.Entry]:
    return j.since(cursor, recent or set(), wait, time.monotonic() + 30, never)


def exit_file(tmp_path: Path, container_id: str) -> None:
    (tmp_path / "exits" / container_id).write_text("0")


def test_changes_and_exits_come_oldest_first_with_their_pod(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.note(Change.CREATED, POD, POD)
    j.note(Change.STARTED, POD, POD)
    j.note(Change.CREATED, CID, "")
    exit_file(tmp_path, CID)
    j.note(Change.DELETED, CID, POD)
    entries = poll(j)
    assert [(e.change, e.object_id, e.sandbox_id) for e in entries] == [
        (Change.CREATED, POD, POD), (Change.STARTED, POD, POD), (Change.CREATED, CID, ""),
        (Change.STOPPED, CID, ""), (Change.DELETED, CID, POD)]
    assert j.deleted_from(CID) == POD
    assert j.deleted_from("d" * 64) is None


def test_one_op_noting_two_changes_at_one_stamp_keeps_their_order(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.note(Change.STARTED, POD, POD)
    j.note(Change.CREATED, POD, POD)
    stamp = time.time_ns()
    for name in os.listdir(j.journal_dir):
        os.utime(os.path.join(j.journal_dir, name), ns=(stamp, stamp))
    entries = poll(j)
    assert [e.change for e in entries] == [Change.CREATED, Change.STARTED]


def test_a_poll_skips_what_the_caller_has_seen_and_looks_back(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.note(Change.CREATED, CID, POD)
    first = poll(j)
    cursor = max(e.stamp for e in first)
    keys = {e.key for e in first}
    # Named as seen: not answered again, even inside the look-back.
    assert poll(j, cursor, keys) == []
    # A change stamped a little before the cursor (a temp file's mtime,
    # renamed late) is still found.
    j.note(Change.STARTED, CID, POD)
    late = cursor - 1_000_000_000
    started = next(n for n in os.listdir(j.journal_dir) if n.startswith("started."))
    os.utime(os.path.join(j.journal_dir, started), ns=(late, late))
    assert [e.change for e in poll(j, cursor, keys)] == [Change.STARTED]


def test_an_empty_poll_answers_nothing(tmp_path: Path) -> None:
    j = journal(tmp_path)
    assert poll(j, 12345, wait=0.3) == []


def test_a_poll_stops_when_its_caller_goes(tmp_path: Path) -> None:
    j = journal(tmp_path)

    def gone() -> None:
        raise TimeoutError("caller gone")
    with pytest.raises(TimeoutError):
        j.since(0, set(), 30.0, time.monotonic() + 60, gone)


def test_old_journal_entries_are_pruned_by_the_writers(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.note(Change.CREATED, CID, POD)
    old = time.time_ns() - changes.KEEP_NS - 1_000_000_000
    (name,) = os.listdir(j.journal_dir)
    os.utime(os.path.join(j.journal_dir, name), ns=(old, old))
    j._pruned_at = 0  # due now
    j.note(Change.STARTED, CID, POD)
    assert [n.split(".")[0] for n in os.listdir(j.journal_dir)] == ["started"]


def test_old_journal_entries_are_pruned_by_the_polls_of_a_quiet_node(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.note(Change.CREATED, CID, POD)
    j.note(Change.STARTED, CID, POD)
    assert len(poll(j)) == 2
    old = time.time_ns() - changes.KEEP_NS - 1_000_000_000
    for name in os.listdir(j.journal_dir):
        os.utime(os.path.join(j.journal_dir, name), ns=(old, old))
    j._pruned_at = 0  # due now
    assert poll(j) == []  # no writer came
    assert os.listdir(j.journal_dir) == []


def test_temp_files_and_strangers_in_the_journal_are_ignored(tmp_path: Path) -> None:
    j = journal(tmp_path)
    os.makedirs(j.journal_dir)
    Path(j.journal_dir, ".created.x.y.z").write_text("")
    Path(j.journal_dir, "bogus").write_text("")
    Path(j.journal_dir, "renamed.a.b.c").write_text("")
    assert poll(j) == []


def test_an_exit_stamped_before_its_start_note_still_comes_after_it(tmp_path: Path) -> None:
    j = journal(tmp_path)
    exit_file(tmp_path, CID)
    early = time.time_ns() - 1_000_000_000
    os.utime(tmp_path / "exits" / CID, ns=(early, early))
    j.note(Change.CREATED, POD, POD)  # another object's change in between
    j.note(Change.STARTED, CID, "")
    assert [(e.change, e.object_id) for e in poll(j)] == [
        (Change.STARTED, CID), (Change.CREATED, POD), (Change.STOPPED, CID)]


def test_a_file_replaced_by_a_rename_is_seen_with_its_new_stamp(tmp_path: Path) -> None:
    # A poll remembers the stamps of the files it has seen (by name and
    # inode); a replacement is a new inode, so it is read afresh.
    j = journal(tmp_path)
    exit_file(tmp_path, CID)
    (first,) = poll(j)
    replacement = tmp_path / "exits" / f".{CID}.tmp"
    replacement.write_text("1")
    later = first.stamp + 2_000_000_000
    os.utime(replacement, ns=(later, later))
    os.replace(replacement, tmp_path / "exits" / CID)
    (again,) = poll(j, cursor=first.stamp + 1_000_000_000 + changes.LOOKBACK_NS)
    assert (again.key, again.stamp) == (first.key, later)
    # Gone, and so forgotten.
    os.unlink(tmp_path / "exits" / CID)
    assert poll(j) == []
