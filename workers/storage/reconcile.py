"""Start-up reconcile: finish or undo what a crash left in the storage pool.

What it removes
    - temp dirs of unpacks and rootfs creates, and ``.rm-`` dirs of removals
      a crash cut short (layers.py and rootfs.py say why these are the only
      traces a crash can leave);
    - short links whose layer never appeared;
    - the rootfs (mount, upper dir, record, usage entry) of every container
      the caller does not list as live, and mount points left with no record;
    - usage entries (usage_cache.py) of containers with no rootfs, and the
      temp files of entry writes a kill cut short;
    - when ``live_layers`` is given, every layer it does not list and no
      remaining rootfs uses. The caller passes every chain id of every
      image record, before the image pool serves pulls: a layer unpacked
      for a pull whose image record is not written yet is not live;
    - lock files nobody holds (a killed worker's, whatever their object):
      the next lock of a live object makes its file again.

Concurrency
    Every object is touched under its own lock, taken without waiting: a
    temp dir whose layer or container lock is held belongs to an operation
    still running in another worker and is left alone (reported as busy).
    So a reconcile may run while the pool serves requests, except for the
    layer collection above.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Collection

from ...proto.errors import FailedPrecondition
from ...proto.storage_ops import Reconciled, volume_owner
from .. import locks
from . import layers, records, rootfs
from .layout import RM_PREFIX, TMP_PREFIX, USAGE_SUFFIX, Layout, is_chain_hex

log = logging.getLogger(__name__)

# Reconciled's fields, filled in as each sweep goes.
Report = dict[str, list[str]]


def reconcile(layout: Layout, live_containers: Collection[str],
              live_layers: Collection[str] | None, deadline: float,
              check: Callable[[], None]) -> Reconciled:
    report: Report = {"removed_temp": [], "removed_links": [], "removed_containers": [],
                      "removed_layers": [], "busy": []}
    _temp_dirs(layout, report)
    check()
    _links(layout, report)
    check()
    _containers(layout, set(live_containers), report)
    check()
    dropped = _usage_entries(layout)
    if dropped:
        log.info("Removed %d usage entries of containers with no rootfs", len(dropped))
    if live_layers is not None:
        _layers(layout, set(live_layers), deadline, report, check)
    swept = locks.sweep(layout.locks_dir)
    if swept:
        log.info("Removed %d lock files nobody held", len(swept))
    if any(report[k] for k in report if k != "busy"):
        log.info("Reconciled storage: %s", {k: len(v) for k, v in report.items()})
    return Reconciled(**report)


def _temp_dirs(layout: Layout, report: Report) -> None:
    for parent, lock_of in ((layout.layers_dir, _layer_lock_of),
                            (layout.containers_dir, _container_lock_of)):
        try:
            names = os.listdir(parent)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith((TMP_PREFIX, RM_PREFIX)):
                continue
            lock = locks.try_acquire(layout.locks_dir, lock_of(name))
            if lock is None:
                report["busy"].append(name)
                continue
            try:
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            finally:
                lock.release()
            report["removed_temp"].append(name)


def _strip(name: str) -> str:
    """``.tmp-<object>-<rand>`` -> ``<object>``."""
    prefix = TMP_PREFIX if name.startswith(TMP_PREFIX) else RM_PREFIX
    return name[len(prefix):].rsplit("-", 1)[0]


def _layer_lock_of(name: str) -> str:
    return layers.lock_name(_strip(name))


def _container_lock_of(name: str) -> str:
    return rootfs.lock_name(_strip(name))


def _links(layout: Layout, report: Report) -> None:
    try:
        names = os.listdir(layout.links_dir)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(layout.links_dir, name)
        try:
            target = os.readlink(path)
        except OSError:
            continue
        if os.path.exists(path):
            continue
        # ../layers/<hex>/diff: an unpack that is still running has it locked.
        parts = target.split("/")
        chain_hex = parts[2] if len(parts) == 4 else ""
        lock = (locks.try_acquire(layout.locks_dir, layers.lock_name(chain_hex))
                if is_chain_hex(chain_hex) else None)
        if is_chain_hex(chain_hex) and lock is None:
            report["busy"].append(f"l/{name}")
            continue
        try:
            if not os.path.exists(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                report["removed_links"].append(name)
        finally:
            if lock is not None:
                lock.release()


def _containers(layout: Layout, live: set[str], report: Report) -> None:
    known = set(records.container_ids(layout))
    for parent in (layout.mounts_dir, layout.idmap_stage_dir):
        with contextlib.suppress(FileNotFoundError):
            known |= {n for n in os.listdir(parent) if not n.startswith(".")}
    # A live container's image volumes live with it.
    for cid in sorted(c for c in known if volume_owner(c) not in live):
        lock = locks.try_acquire(layout.locks_dir, rootfs.lock_name(cid))
        if lock is None:
            report["busy"].append(cid)
            continue
        try:
            if rootfs.delete_held(layout, cid):
                report["removed_containers"].append(cid)
        finally:
            lock.release(unlink=True)


def _usage_entries(layout: Layout) -> list[str]:
    """Entries whose container is gone, and temp files, each under its
    container's lock (a create or a measure may be writing it now)."""
    try:
        names = os.listdir(layout.usage_dir)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        temp = name.startswith(TMP_PREFIX)
        cid = _strip(name) if temp else name.removesuffix(USAGE_SUFFIX)
        if not temp and os.path.isdir(layout.container_dir(cid)):
            continue
        lock = locks.try_acquire(layout.locks_dir, rootfs.lock_name(cid))
        if lock is None:
            continue
        gone = not os.path.isdir(layout.container_dir(cid))
        try:
            if temp or gone:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(layout.usage_dir, name))
                removed.append(name)
        finally:
            lock.release(unlink=gone)
    return removed


def _layers(layout: Layout, live: set[str], deadline: float, report: Report,
            check: Callable[[], None]) -> None:
    try:
        names = os.listdir(layout.layers_dir)
    except FileNotFoundError:
        return
    for name in sorted(names):
        if not is_chain_hex(name):
            continue
        record = records.layer(layout, name)
        if record is None or record.get("chain_id") in live:
            continue
        check()
        chain_id = str(record["chain_id"])
        try:
            layers.remove(layout, chain_id, deadline)
        except FailedPrecondition:
            continue  # a live container still stacks it; its image may come back
        report["removed_layers"].append(chain_id)
