"""Pod network records: ``<root>/net/pods/<pod id>.json``, one per pod.

A record is what a later DEL needs and what PodSandboxStatus reads: the
network config the ADD used (DEL must get the same config, CNI spec
"Lifecycle & Ordering"), the CNI_ARGS and capability args, the netns path,
and once the chain finished, the cached result that DEL and CHECK take as
``prevResult``.

Why under the persistent root and not the run dir: host-local keeps its
leases under /var/lib, which survives a reboot, while the run dir does not.
If the records lived in /run a reboot would forget which pods hold leases
and nobody could ever DEL them; kept next to the leases, the reconcile after
a reboot finds every pod that is gone and releases its addresses. libcni
makes the same choice (/var/lib/cni/results).

Invariants
    - Writes are atomic: temp file in the same dir, fsync, rename, fsync of
      the dir. A reader sees the old record or the new one, never a torn one.
    - The record is written *before* the namespace is made or any plugin
      runs (state ``setting_up``) and removed *after* DEL succeeded, so a
      crash at any instant leaves a record for every pod that may hold
      network resources.
    - Callers hold the pod's lock; records of different pods are different
      files, so nothing here locks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from typing import Any

SETTING_UP = "setting_up"
READY = "ready"
_SUFFIX = ".json"


class RecordCorrupt(ValueError):
    """A record that cannot be parsed; the message names the file."""


def record_path(records_dir: str, pod_id: str) -> str:
    return os.path.join(records_dir, pod_id + _SUFFIX)


def load(records_dir: str, pod_id: str) -> dict[str, Any] | None:
    """The pod's record, or None if it has none."""
    path = record_path(records_dir, pod_id)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RecordCorrupt(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise RecordCorrupt(f"{path}: not a JSON object")
    return data


def save(records_dir: str, pod_id: str, record: dict[str, Any]) -> None:
    """Replace the pod's record atomically and durably."""
    os.makedirs(records_dir, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{pod_id}.", suffix=".tmp", dir=records_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, separators=(",", ":"), sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, record_path(records_dir, pod_id))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(records_dir)


def delete(records_dir: str, pod_id: str) -> None:
    """Drop the pod's record, and any temp file a killed ``save`` left.

    The caller holds the pod lock, so no ``save`` of this pod is in flight.
    """
    temp = re.compile(re.escape(f".{pod_id}.") + r"[A-Za-z0-9_]+\.tmp")
    for name in _listdir(records_dir):
        if temp.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(records_dir, name))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(records_dir, pod_id))
        _fsync_dir(records_dir)


def list_pods(records_dir: str) -> list[str]:
    """Pod ids that have a record."""
    names = _listdir(records_dir)
    return sorted(n[: -len(_SUFFIX)] for n in names
                  if n.endswith(_SUFFIX) and not n.startswith("."))


def remove_stale_temps(records_dir: str, older_than: float = 60.0) -> list[str]:
    """Delete temp files a crash left mid-``save``.

    Only files older than ``older_than`` seconds go: a ``save`` in flight in
    another worker finishes in milliseconds and must keep its temp file.
    """
    names = _listdir(records_dir)
    cutoff = time.time() - older_than
    removed = []
    for name in names:
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        path = os.path.join(records_dir, name)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_mtime < cutoff:
                os.unlink(path)
                removed.append(name)
    return removed


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
