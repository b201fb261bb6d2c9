"""CRI name reservations: one object per name, on disk.

Names come from metadata (proto/naming.py), so a kubelet retry carries the
same name. A reservation is a file holding the owner's id, created whole
with link(2) (content first, then an atomic link that fails if the name is
taken), so no reader ever sees an empty reservation. Callers hold the
name's flock (``Layout.name_lock``) around ``reserve`` and the owner's
record write, and around ``release``; a reservation whose owner has no
record was left by a worker killed between the two, and is taken over, or
dropped by the start-up reconcile (``drop_dead``).

Names may be far longer than a file name may be (workers/fsnames.py), so
the file is named by ``component(name)`` and holds the owner's id on its
first line and the whole name on its second; the owner's record keeps the
name too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from ...proto.errors import AlreadyExists, shorten
from ..fsnames import component
from ..records import fsync_dir


def reserve(names_dir: str, name: str, owner: str, kind: str,
            exists: Callable[[str], bool]) -> None:
    """Reserve ``name`` for ``owner`` or raise AlreadyExists naming the holder.

    ``exists(id)`` says whether an object of that id is on record.
    """
    os.makedirs(names_dir, mode=0o700, exist_ok=True)
    path = _path(names_dir, name)
    tmp = os.path.join(names_dir, f".{component(owner)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{owner}\n{name}\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        while True:
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                current = holder(names_dir, name)
                if current == owner:
                    return
                if current is not None and exists(current):
                    raise AlreadyExists(
                        f"{kind} name {shorten(name)} is already in use by {kind} {current}",
                        details={"holder": current}) from None
                # A dead reservation: its creator died before writing a record.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
    finally:
        os.unlink(tmp)
    fsync_dir(names_dir)


def holder(names_dir: str, name: str) -> str | None:
    try:
        with open(_path(names_dir, name), encoding="utf-8") as f:
            return f.readline().strip() or None
    except FileNotFoundError:
        return None


def release(names_dir: str, name: str, owner: str) -> None:
    """Drop the reservation if ``owner`` still holds it."""
    if holder(names_dir, name) == owner:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_path(names_dir, name))


def drop_dead(names_dir: str, alive: Callable[[str], bool]) -> list[str]:
    """Drop the reservations whose owner is not ``alive`` and the temp files
    of reserves that were cut short; return the names dropped.

    For the start-up reconcile, when no reserve can be running.
    """
    try:
        files = sorted(os.listdir(names_dir))
    except FileNotFoundError:
        return []
    dropped = []
    for file in files:
        path = os.path.join(names_dir, file)
        if file.startswith("."):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        try:
            with open(path, encoding="utf-8") as f:
                owner, name = f.readline().strip(), f.readline().rstrip("\n")
        except FileNotFoundError:
            continue
        if owner and alive(owner):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        dropped.append(name or file)
    return dropped


def _path(names_dir: str, name: str) -> str:
    return os.path.join(names_dir, component(name))
