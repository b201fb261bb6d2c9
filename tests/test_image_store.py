"""The content store, records, leases and GC, on real files (no registry)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podvisor.workers import locks
from podvisor.workers.image.errors import DataLoss
from podvisor.workers.image.records import BlobRecord, NewImage
from podvisor.workers.image.store import ImageStore


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def nowait(seconds: float) -> None:
    raise AssertionError("a lock was held unexpectedly")


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    s = ImageStore(str(tmp_path / "root"), str(tmp_path / "run"))
    s.open(nowait)
    return s


def image(config: bytes, *layers: bytes) -> NewImage:
    blobs = (BlobRecord("config", digest(config), "application/vnd.oci.image.config.v1+json",
                        len(config)),
             *(BlobRecord("layer", digest(data), "application/vnd.oci.image.layer.v1.tar",
                          len(data), digest(data)) for data in layers))
    return NewImage(id=digest(config), manifest_digest=digest(b"m" + config),
                    manifest_media_type="application/vnd.oci.image.manifest.v1+json",
                    index_digest=None, config_media_type=blobs[0].media_type, user="",
                    blobs=blobs)


def put_all(store: ImageStore, *contents: bytes) -> None:
    for data in contents:
        store.blobs.put(digest(data), data, "test")


def test_ingest_verifies_and_publishes_atomically(store: ImageStore) -> None:
    data = os.urandom(100_000)
    with store.blobs.ingest(digest(data), len(data), "test") as ingest:
        ingest.write(memoryview(data)[:500])
        assert not store.blobs.exists(digest(data))
        ingest.write(memoryview(data)[500:])
        ingest.commit()
    assert Path(store.blobs.path(digest(data))).read_bytes() == data
    assert os.listdir(store.blobs.ingest_dir) == []


def test_corrupt_content_raises_and_leaves_nothing(store: ImageStore) -> None:
    data = b"the real content"
    with pytest.raises(DataLoss, match="is corrupt"), \
            store.blobs.ingest(digest(data), len(data), "r.io") as ingest:
        ingest.write(b"the fake content")
        ingest.commit()
    assert not store.blobs.exists(digest(data))
    assert os.listdir(store.blobs.ingest_dir) == []


def test_oversized_and_truncated_content_are_refused(store: ImageStore) -> None:
    data = b"0123456789"
    with pytest.raises(DataLoss, match="larger than"), \
            store.blobs.ingest(digest(data), 5, "r.io") as ingest:
        ingest.write(data)
    with pytest.raises(DataLoss, match="ended after 5 of 10"), \
            store.blobs.ingest(digest(data), 10, "r.io") as ingest:
        ingest.write(data[:5])
        ingest.commit()
    assert os.listdir(store.blobs.ingest_dir) == []


def test_reset_starts_a_download_over(store: ImageStore) -> None:
    data = b"abcdef"
    with store.blobs.ingest(digest(data), len(data), "r.io") as ingest:
        ingest.write(b"xyz")
        ingest.reset()
        ingest.write(data)
        ingest.commit()
    assert store.blobs.read(digest(data)) == data


def test_two_tags_are_one_image_and_a_tag_moves(store: ImageStore) -> None:
    one, two = image(b"config-1", b"layer"), image(b"config-2", b"layer")
    store.records.add(one, [("r.io/a:1", "tag"), ("r.io/a:latest", "tag")])
    store.records.add(one, [("r.io/a:1", "tag")])
    [record] = store.records.all()
    assert sorted(record.repo_tags) == ["r.io/a:1", "r.io/a:latest"]
    store.records.add(two, [("r.io/a:latest", "tag")])
    assert store.records.image_for("r.io/a:latest") == two.id
    got = store.records.get(one.id)
    assert got is not None and got.repo_tags == ("r.io/a:1",)


def test_untag_keeps_the_image_until_its_last_tag(store: ImageStore) -> None:
    one = image(b"config-1")
    store.records.add(one, [("r.io/a:1", "tag"), ("r.io/a:2", "tag")])
    assert store.records.untag("r.io/a:1", one.id)
    assert not store.records.untag("r.io/a:2", one.id)
    got = store.records.get(one.id)
    assert got is not None and got.repo_tags == ("r.io/a:2",)


def test_removal_keeps_blobs_shared_with_another_image(store: ImageStore) -> None:
    shared, own = b"shared layer", b"own layer"
    one, two = image(b"config-1", shared, own), image(b"config-2", shared)
    put_all(store, b"config-1", b"config-2", shared, own)
    store.records.add(one, [("r.io/a:1", "tag")])
    store.records.add(two, [("r.io/b:1", "tag")])
    store.remove_image(one.id, nowait)
    assert store.blobs.exists(digest(shared))
    assert not store.blobs.exists(digest(own))
    assert not store.blobs.exists(one.id)
    store.remove_image(two.id, nowait)
    assert list(store.blobs.digests()) == []
    assert store.records.all() == []


def test_collect_spares_blobs_named_by_a_live_lease(store: ImageStore) -> None:
    put_all(store, b"in use by a pull", b"garbage")
    lease = store.lease()
    assert store.reserve(lease, digest(b"in use by a pull"), time.monotonic() + 5, nowait)
    deleted = store.collect([digest(b"in use by a pull"), digest(b"garbage")], nowait)
    assert deleted == [digest(b"garbage")]
    store.release_lease(lease, failed=True, wait=nowait)
    assert list(store.blobs.digests()) == []


def test_a_dead_workers_lease_and_partial_files_are_swept(tmp_path: Path,
                                                          store: ImageStore) -> None:
    put_all(store, b"orphan", b"leased by the dead")
    # A real process takes a lease and starts a download, then is killed.
    code = f"""
import os, sys, time
from podvisor.workers.image.store import ImageStore
s = ImageStore({str(tmp_path / 'root')!r}, {str(tmp_path / 'run')!r})
lease = s.lease()
s.reserve(lease, {digest(b'leased by the dead')!r}, time.monotonic() + 5, time.sleep)
ingest = s.blobs.ingest("sha256:" + "0" * 64, None, "test")
ingest.write(b"half")
print("ready", flush=True)
time.sleep(600)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        # While it lives, its lease and partial file are respected.
        store.sweep(nowait)
        assert store.blobs.exists(digest(b"leased by the dead"))
        assert not store.blobs.exists(digest(b"orphan"))
        assert len(os.listdir(store.blobs.ingest_dir)) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    store.sweep(nowait)
    assert list(store.blobs.digests()) == []
    assert os.listdir(store.blobs.ingest_dir) == []
    assert os.listdir(store.leases.directory) == []


def test_gc_waits_for_a_reserving_pull_through_the_lock(store: ImageStore) -> None:
    lease = store.lease()
    waited: list[float] = []

    def wait(seconds: float) -> None:
        waited.append(seconds)
        if len(waited) > 3:
            raise TimeoutError("still locked")
        time.sleep(seconds)

    holder = locks.try_acquire(store.locks_dir, "gc")
    assert holder is not None
    try:
        with pytest.raises(TimeoutError):
            store.reserve(lease, digest(b"x"), time.monotonic() + 60, wait)
    finally:
        holder.release()
    assert store.reserve(lease, digest(b"x"), time.monotonic() + 5, nowait) is False
    lease.release()
