"""Disk usage of a directory tree: allocated bytes and inodes, as du(1) counts.

Bytes are ``st_blocks * 512`` (what the files hold on disk, sparse holes
excluded); an inode with several hard links is counted once; symlinks are
never followed and other filesystems mounted inside are not entered. Files
that vanish while the walk runs (a container writing its upper dir) are
skipped: the numbers are a snapshot, not a transaction.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Usage:
    bytes: int = 0
    inodes: int = 0

    def add(self, other: Usage) -> None:
        self.bytes += other.bytes
        self.inodes += other.inodes


def walk(path: str, check: Callable[[], None] = lambda: None) -> Usage:
    """The usage of ``path`` and everything under it; zero if it is absent.

    ``check`` is called once per directory so a caller can stop a long walk
    at its deadline.
    """
    usage = Usage()
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return usage
    usage.bytes += top.st_blocks * 512
    usage.inodes += 1
    if not stat.S_ISDIR(top.st_mode):
        return usage
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        check()
        current = stack.pop()
        try:
            entries = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if st.st_dev != top.st_dev:
                        continue  # a mount point: another filesystem's usage
                    stack.append(entry.path)
                elif st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                usage.bytes += st.st_blocks * 512
                usage.inodes += 1
    return usage
