"""Write one layer tar's entries into a directory, safely and in overlay form.

tarfile only parses here; every write is made by this module relative to a
directory descriptor, and every directory on the way to an entry is opened
with O_NOFOLLOW, so no entry can reach outside the layer whatever earlier
entries planted. Each refusal is an InvalidArgument naming the entry; the
caller then deletes the half-written directory (layers.py).

Rules
    - Names: an absolute path or a ``..`` component is refused; ``.`` and
      empty components are dropped. Missing parent directories are created
      (0755, root), as tar(1) does.
    - Nothing is written through a symlink: a parent component that is a
      symlink (or not a directory) is refused rather than followed.
      Symlink targets are kept as they are (absolute ones resolve inside the
      container's root at run time) but may not climb above the layer root:
      an absolute target is read from the layer root, a relative one from
      the link's directory, and a ``..`` below the root is refused.
    - Hard links must name an entry already in this layer (never a
      directory), by the same name rules.
    - Later entries replace earlier ones of the same name (tar semantics); a
      directory over a directory merges.
    - OCI whiteouts become overlayfs ones: ``.wh.<name>`` a 0/0 character
      device ``<name>``, ``.wh..wh..opq`` the xattr trusted.overlay.opaque=y
      on its directory. A whiteout only hides lower layers (image-spec), so
      one whose target this layer already holds is dropped, or marks that
      directory opaque; a directory later written over a whiteout device is
      made opaque. Other ``.wh..wh.`` entries (aufs metadata) are skipped.
    - Metadata: uid/gid numbers (names are ignored), the mode with
      setuid/setgid/sticky (chmod after chown, which clears them), mtimes
      (directories last, since adding children changes theirs), xattrs from
      PAX ``SCHILY.xattr.*`` records. An xattr the filesystem does not
      support is skipped with a warning; ``trusted.overlay.*`` is never taken
      from a tar, since it would steer the overlay mount (redirects, opacity)
      behind the whiteout rules above.
    - Devices and fifos are created as they are (the worker runs as root).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tarfile
from typing import IO

from ...proto.errors import InvalidArgument

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_OVERLAY_XATTRS = "trusted.overlay."
_PAX_XATTR = "SCHILY.xattr."
_COPY_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Parts = tuple[str, ...]


def split_name(name: str) -> Parts:
    """The components of an entry name, or ValueError saying why it escapes."""
    if name.startswith("/"):
        raise ValueError("is an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ValueError("has a '..' component")
    return parts


def symlink_escapes(link: Parts, target: str) -> bool:
    """Whether ``target``, read lexically from ``link``'s directory, climbs above the root."""
    depth = 0 if target.startswith("/") else len(link) - 1
    for part in target.split("/"):
        if part in ("", "."):
            continue
        depth = depth - 1 if part == ".." else depth + 1
        if depth < 0:
            return True
    return False


def _is_whiteout_device(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class LayerWriter:
    """Apply tar members, in order, under the directory ``root_fd`` (not owned)."""

    def __init__(self, root_fd: int, layer: str) -> None:
        self._root = root_fd
        self._layer = layer
        # Directory mtimes are set last: every later child changes them.
        self._dir_times: dict[Parts, int] = {}
        # Consecutive tar entries mostly share a parent; keep its descriptor
        # until anything is removed (a removal may have replaced it).
        self._cached: tuple[Parts, int] | None = None

    def close(self) -> None:
        self._drop_cache()

    def _refuse(self, entry: str, reason: str) -> InvalidArgument:
        return InvalidArgument(
            f"layer {self._layer}: entry {entry!r} {reason}; the layer was not unpacked")

    # -- walking ---------------------------------------------------------

    def _drop_cache(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _open_dir(self, parts: Parts, entry: str, *, create: bool) -> int:
        """A new descriptor of directory ``parts``, never through a symlink."""
        if not parts:
            return os.dup(self._root)
        if self._cached is not None and self._cached[0] == parts:
            return os.dup(self._cached[1])
        fd = os.dup(self._root)
        try:
            for i, part in enumerate(parts):
                nfd = self._step(fd, part, parts[: i + 1], entry, create)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        self._drop_cache()
        self._cached = (parts, os.dup(fd))
        return fd

    def _step(self, fd: int, part: str, path: Parts, entry: str, create: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise self._refuse(entry, f"refers to {'/'.join(path)}, which is not in "
                                          "this layer") from None
            os.mkdir(part, 0o755, dir_fd=fd)
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.fchmod(nfd, 0o755)  # whatever the worker's umask
            return nfd
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
        st = os.stat(part, dir_fd=fd, follow_symlinks=False)
        if create and _is_whiteout_device(st):
            # An earlier whiteout of this name in this layer: the directory
            # replaces it and, like the whiteout, hides the lower ones.
            os.unlink(part, dir_fd=fd)
            os.mkdir(part, 0o755, dir_fd=fd)
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.fchmod(nfd, 0o755)
            os.setxattr(nfd, OPAQUE_XATTR, b"y")
            return nfd
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise self._refuse(entry, f"would be written through {'/'.join(path)}, which is "
                                  f"{kind}")

    def _clear(self, pfd: int, name: str, *, keep_dir: bool) -> os.stat_result | None:
        """Make room for a new entry ``name``; return what was there, if kept or removed."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return st
            self._drop_cache()
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        return st

    # -- entries ---------------------------------------------------------

    def add(self, member: tarfile.TarInfo, data: IO[bytes] | None) -> None:
        """Apply one member; ``data`` is its content when it is a regular file."""
        entry = member.name
        try:
            parts = split_name(entry)
        except ValueError as exc:
            raise self._refuse(entry, str(exc)) from None
        if not parts:
            if not member.isdir():
                raise self._refuse(entry, "names the layer root but is not a directory")
            self._metadata_fd(self._root, member, entry)
            self._dir_times[()] = _mtime_ns(member)
            return
        name = parts[-1]
        if name.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, entry, member)
            return
        pfd = self._open_dir(parts[:-1], entry, create=True)
        try:
            if member.isreg():
                self._regular(pfd, name, member, entry, data)
            elif member.isdir():
                self._directory(pfd, parts, member, entry)
            elif member.issym():
                self._symlink(pfd, parts, member, entry)
            elif member.islnk():
                self._hardlink(pfd, parts, member, entry)
            elif member.ischr() or member.isblk() or member.isfifo():
                self._special(pfd, name, member, entry)
            else:
                raise self._refuse(entry, f"has tar type {member.type!r}, which a layer "
                                          "may not hold")
        finally:
            os.close(pfd)

    def _regular(self, pfd: int, name: str, member: tarfile.TarInfo, entry: str,
                 data: IO[bytes] | None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600, dir_fd=pfd)
        except FileExistsError:
            # Rare (a later entry replacing an earlier one): clear only then,
            # sparing every other file a stat.
            self._clear(pfd, name, keep_dir=False)
            fd = os.open(name, flags, 0o600, dir_fd=pfd)
        try:
            if data is not None:
                _copy(data, fd)
            self._metadata_fd(fd, member, entry)
            os.utime(fd, ns=(_mtime_ns(member), _mtime_ns(member)))
        finally:
            os.close(fd)

    def _directory(self, pfd: int, parts: Parts, member: tarfile.TarInfo, entry: str) -> None:
        name = parts[-1]
        old = self._clear(pfd, name, keep_dir=True)
        if old is None or not stat.S_ISDIR(old.st_mode):
            os.mkdir(name, 0o700, dir_fd=pfd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        try:
            self._metadata_fd(fd, member, entry)
            if old is not None and _is_whiteout_device(old):
                os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)
        self._dir_times[parts] = _mtime_ns(member)

    def _symlink(self, pfd: int, parts: Parts, member: tarfile.TarInfo, entry: str) -> None:
        if symlink_escapes(parts, member.linkname):
            raise self._refuse(entry, f"is a symlink to {member.linkname!r}, which climbs "
                                      "above the layer root")
        name = parts[-1]
        self._clear(pfd, name, keep_dir=False)
        os.symlink(member.linkname, name, dir_fd=pfd)
        self._metadata_at(pfd, name, member, entry, chmod=False)

    def _hardlink(self, pfd: int, parts: Parts, member: tarfile.TarInfo, entry: str) -> None:
        try:
            target = split_name(member.linkname)
        except ValueError as exc:
            raise self._refuse(entry, f"is a hard link to {member.linkname!r}, which "
                                      f"{exc}") from None
        if not target:
            raise self._refuse(entry, "is a hard link to the layer root")
        if target == parts:
            return
        name = parts[-1]
        tfd = self._open_dir(target[:-1], entry, create=False)
        try:
            try:
                st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                raise self._refuse(entry, f"is a hard link to {member.linkname!r}, which is "
                                          "not in this layer") from None
            if stat.S_ISDIR(st.st_mode):
                raise self._refuse(entry, f"is a hard link to directory {member.linkname!r}")
            self._clear(pfd, name, keep_dir=False)
            os.link(target[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _special(self, pfd: int, name: str, member: tarfile.TarInfo, entry: str) -> None:
        if member.ischr():
            kind, dev = stat.S_IFCHR, os.makedev(member.devmajor, member.devminor)
        elif member.isblk():
            kind, dev = stat.S_IFBLK, os.makedev(member.devmajor, member.devminor)
        else:
            kind, dev = stat.S_IFIFO, 0
        self._clear(pfd, name, keep_dir=False)
        os.mknod(name, kind | 0o600, dev, dir_fd=pfd)
        self._metadata_at(pfd, name, member, entry, chmod=True)

    def _whiteout(self, parts: Parts, entry: str, member: tarfile.TarInfo) -> None:
        name = parts[-1]
        if name == OPAQUE_MARKER:
            fd = self._open_dir(parts[:-1], entry, create=True)
            try:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
            return
        if name.startswith(OPAQUE_MARKER[:8]):
            log.debug("Skipping aufs metadata entry %s", entry)
            return
        hidden = name[len(WHITEOUT_PREFIX):]
        if hidden in ("", ".", ".."):
            raise self._refuse(entry, "is a whiteout of no file")
        pfd = self._open_dir(parts[:-1], entry, create=True)
        try:
            try:
                st = os.stat(hidden, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                os.mknod(hidden, stat.S_IFCHR, 0, dir_fd=pfd)
                os.chown(hidden, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
                return
            # The whiteout may hide only lower layers; this layer's own entry
            # stays, and a directory of it hides the lower ones by opacity.
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(hidden, _DIR_FLAGS, dir_fd=pfd)
                try:
                    os.setxattr(fd, OPAQUE_XATTR, b"y")
                finally:
                    os.close(fd)
        finally:
            os.close(pfd)

    # -- metadata --------------------------------------------------------

    def _metadata_fd(self, fd: int, member: tarfile.TarInfo, entry: str) -> None:
        os.fchown(fd, member.uid, member.gid)
        # After chown: chown clears setuid and setgid.
        os.fchmod(fd, member.mode & 0o7777)
        for key, value in _xattrs(member, entry):
            _set_xattr(fd, key, value, entry)

    def _metadata_at(self, pfd: int, name: str, member: tarfile.TarInfo, entry: str, *,
                     chmod: bool) -> None:
        # Names here were created by this writer a moment ago inside a
        # directory nobody else writes, so a name-based call is safe.
        os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
        if chmod:
            os.chmod(name, member.mode & 0o7777, dir_fd=pfd)
        xattrs = _xattrs(member, entry)
        if xattrs:
            path = f"/proc/self/fd/{pfd}/{name}"
            for key, value in xattrs:
                _set_xattr(path, key, value, entry)
        mtime = _mtime_ns(member)
        os.utime(name, ns=(mtime, mtime), dir_fd=pfd, follow_symlinks=False)

    def finish(self) -> None:
        """Set directory mtimes, deepest first, now that no child will be added."""
        self._drop_cache()
        for parts in sorted(self._dir_times, key=len, reverse=True):
            mtime = self._dir_times[parts]
            try:
                fd = self._open_dir(parts, "/".join(parts), create=False)
            except (InvalidArgument, OSError):
                continue  # replaced by a later entry: it has its own time
            try:
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)
        self._drop_cache()


def _copy(data: IO[bytes], fd: int) -> None:
    while chunk := data.read(_COPY_CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def _mtime_ns(member: tarfile.TarInfo) -> int:
    return round(float(member.mtime) * 1_000_000_000)


def _xattrs(member: tarfile.TarInfo, entry: str) -> list[tuple[str, bytes]]:
    found = []
    for key, value in member.pax_headers.items():
        if not key.startswith(_PAX_XATTR):
            continue
        name = key[len(_PAX_XATTR):]
        if name.startswith(_OVERLAY_XATTRS):
            log.warning("Dropping xattr %s of %s: overlay state comes from whiteouts only",
                        name, entry)
            continue
        # tarfile decodes PAX values as UTF-8, falling back to surrogateescape
        # for binary ones (security.capability): this restores the bytes.
        found.append((name, value.encode("utf-8", "surrogateescape")))
    return found


def _set_xattr(target: int | str, key: str, value: bytes, entry: str) -> None:
    try:
        if isinstance(target, int):
            os.setxattr(target, key, value)
        else:
            os.setxattr(target, key, value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise
        log.warning("Skipping xattr %s of %s: not supported by this filesystem", key, entry)
