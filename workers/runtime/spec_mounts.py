"""The container's mounts: the system ones, the pod's files, and the CRI's.

The system set is the OCI runtime-tools default that CRI-O starts from:
proc, a 64 MiB tmpfs /dev, devpts, mqueue, sysfs read-only (read-write
when privileged) and a read-only cgroup mount (CRI-O ``addOCIBindMounts``;
read-write when privileged, ``setOCIBindMountsPrivileged``). /dev/shm is a
bind of the pod's shm mount, or of the host's /dev/shm for a host-IPC pod
(CRI-O ``addShmMount``, ``libsandbox.DevShmPath``). resolv.conf, hosts and
hostname are binds of the pod's files, read-only when the rootfs is
(CRI-O ``setupBaseContainerMounts``).

CRI mounts (``rbind``) map propagation PRIVATE → rprivate,
HOST_TO_CONTAINER → rslave, BIDIRECTIONAL → rshared; the last two need the
source's mount to be shared (or, for rslave, a slave), which is checked
against /proc/self/mountinfo as CRI-O's ``ensureShared(OrSlave)`` does,
and they set the rootfs propagation to match. ``recursive_read_only`` is
the "rro" option, valid only with ``readonly``, private propagation and a
runtime whose ``features`` lists it (CRI-O's three checks).
``selinux_relabel`` is ignored: there is no SELinux here. Image and
idmapped mounts are UNIMPLEMENTED rather than silently dropped.
``mount_options`` is ignored, as CRI-O ignores it.

A CRI mount on a path replaces the default mount there; one on /dev or
/sys replaces every default below it too (CRI-O). Mounts under /proc are
refused except the files runc's ``checkProcMount`` accepts (lxcfs-style
binds); runc would refuse them anyway, with a less helpful message.

Missing sources: CRI-O creates a missing ``host_path`` as a directory
(mode 0755) unless it is listed in ``absent_mount_sources_to_reject``,
and so does ``ensure_mount_sources`` here. That is the one side effect of
this module, kept out of ``build_container_spec`` so the builder only
reads: a source still missing when the spec is built is INVALID_ARGUMENT
naming it.

Image Volumes (the image config's ``Volumes``) get no mount: CRI-O's
default ``image_volumes = "mkdir"`` only creates the directory in the
rootfs, which the overlay's upper dir gives for free on first write.

Order: every mount comes after any mount on a parent path; the list is
sorted (stably) by the number of path components of the destination,
as CRI-O and Docker sort theirs.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unimplemented,
    shorten,
)
from .spec_context import NodeFacts, PodContext

Mount = dict[str, Any]

SHM_SIZE = "65536k"   # 64 MiB, Docker's and CRI-O's default /dev/shm and /dev size

_PROPAGATION_OPTION = {api.PROPAGATION_PRIVATE: "rprivate",
                       api.PROPAGATION_HOST_TO_CONTAINER: "rslave",
                       api.PROPAGATION_BIDIRECTIONAL: "rshared"}

# runc's checkProcMount: the only binds it allows inside /proc.
PROC_BIND_ALLOWED = frozenset({
    "/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
    "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/sys/kernel/ns_last_pid",
    "/proc/net/dev",
})


def _mount(destination: str, kind: str, source: str, options: list[str]) -> Mount:
    return {"destination": destination, "type": kind, "source": source, "options": options}


def system_mounts(privileged: bool) -> list[Mount]:
    """proc, /dev, /dev/pts, /dev/mqueue, /sys and /sys/fs/cgroup."""
    access = "rw" if privileged else "ro"
    sys_options = ["nosuid", "noexec", "nodev", access]
    cgroup_options = ["nosuid", "noexec", "nodev", "relatime", access]
    if privileged:
        # CRI-O's privileged sysfs and cgroup mounts also follow host changes.
        sys_options.append("rslave")
        cgroup_options.append("rslave")
    return [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", f"size={SHM_SIZE}"]),
        _mount("/dev/pts", "devpts", "devpts",
               ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/sys", "sysfs", "sysfs", sys_options),
        _mount("/sys/fs/cgroup", "cgroup", "cgroup", cgroup_options),
    ]


def shm_mount(pod: PodContext) -> Mount:
    source = pod.shm_path or "/dev/shm"
    return _mount("/dev/shm", "bind", source, ["rw", "bind", "nosuid", "nodev", "noexec"])


def pod_file_mounts(pod: PodContext, readonly: bool) -> list[Mount]:
    """resolv.conf, hosts and hostname of the pod, when it has them."""
    access = "ro" if readonly else "rw"
    mounts = []
    if pod.resolv_conf:
        mounts.append(_mount("/etc/resolv.conf", "bind", pod.resolv_conf,
                             [access, "bind", "nodev", "nosuid", "noexec"]))
    if pod.hosts_file:
        mounts.append(_mount("/etc/hosts", "bind", pod.hosts_file, [access, "bind"]))
    if pod.hostname_file:
        mounts.append(_mount("/etc/hostname", "bind", pod.hostname_file, [access, "bind"]))
    return mounts


def _clean_destination(path: str) -> str:
    if not path:
        raise InvalidArgument("mount: container_path is empty")
    if not path.startswith("/"):
        raise InvalidArgument(f"mount: container_path {path!r} is not an absolute path")
    clean = posixpath.normpath(path)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    if clean == "/":
        raise InvalidArgument("mount: container_path '/' would cover the container's rootfs")
    if (clean == "/proc" or clean.startswith("/proc/")) and clean not in PROC_BIND_ALLOWED:
        raise InvalidArgument(f"mount: {clean} is inside /proc, where only procfs may be mounted")
    return clean


def _host_path(mount: api.Mount) -> str:
    host = mount.host_path
    if not host:
        raise InvalidArgument("mount: host_path is empty")
    if not host.startswith("/"):
        raise InvalidArgument(f"mount: host_path {host!r} is not an absolute path")
    return host


def ensure_mount_sources(container_config: api.ContainerConfig,
                         absent_to_reject: Collection[str] = ()) -> list[str]:
    """Create missing CRI mount sources as directories, as CRI-O does; return those created."""
    created = []
    for mount in container_config.mounts:
        if mount.image.image:
            continue
        host = _host_path(mount)
        if os.path.lexists(host):
            continue
        if posixpath.normpath(host) in absent_to_reject:
            raise InvalidArgument(f"mount: cannot mount {host}: the path does not exist on the "
                                  "host and would be created as a directory")
        os.makedirs(host, mode=0o755, exist_ok=True)
        created.append(host)
    return created


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: str, mountinfo: str) -> tuple[str, list[str]]:
    """The mount point holding ``path`` and its optional fields (shared:N, master:N)."""
    points: dict[str, list[str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 7:
            continue
        # A later line for the same mount point is a mount stacked on top.
        points[_unescape(fields[4])] = fields[6:fields.index("-")]
    candidate = path
    while True:
        if candidate in points:
            return candidate, points[candidate]
        if candidate == "/":
            raise FailedPrecondition(f"mount: no mount holds {path}")
        candidate = posixpath.dirname(candidate)


def _check_propagation(source: str, propagation: int, mountinfo: str) -> None:
    point, optional = mount_of(source, mountinfo)
    shared = any(o.startswith("shared:") for o in optional)
    slave = any(o.startswith("master:") for o in optional)
    if propagation == api.PROPAGATION_BIDIRECTIONAL and not shared:
        raise FailedPrecondition(f"mount: path {source} is mounted on {point} but it is not a "
                                 "shared mount (bidirectional propagation needs one)")
    if propagation == api.PROPAGATION_HOST_TO_CONTAINER and not (shared or slave):
        raise FailedPrecondition(f"mount: path {source} is mounted on {point} but it is not a "
                                 "shared or slave mount (host-to-container propagation needs one)")


def cri_mounts(mounts: Iterable[api.Mount], node: NodeFacts, mountinfo: str | None = None,
               image_volumes: Sequence[str] = ()) -> tuple[list[Mount], str | None]:
    """The OCI mounts for CRI ``Mount`` messages, and the rootfs propagation they need.

    ``mountinfo`` is read from /proc/self/mountinfo when a mount asks for
    propagation and none is given. ``image_volumes`` are where the images
    of the image mounts are mounted, in their order.
    """
    result: list[Mount] = []
    seen: set[str] = set()
    wanted: set[str] = set()
    volumes = iter(image_volumes)
    for mount in mounts:
        destination = _clean_destination(mount.container_path)
        if destination in seen:
            raise InvalidArgument(f"mount: {destination} is mounted twice")
        seen.add(destination)
        if mount.image.image:
            root = next(volumes, None)
            if root is None:
                raise Internal(f"mount: the image of {destination} was not mounted")
            result.append(_image_mount(destination, root, mount))
            continue
        if mount.uidMappings or mount.gidMappings:
            raise Unimplemented(f"mount: idmapped mounts are not supported ({destination})")
        host = _host_path(mount)
        if not os.path.exists(host):
            raise InvalidArgument(f"mount: host_path {host} does not exist")
        source = os.path.realpath(host)
        propagation = mount.propagation
        if propagation not in _PROPAGATION_OPTION:
            # proto3 enums are open: a number from a newer cri-api parses.
            raise InvalidArgument(f"mount: unknown propagation {propagation} for {destination}")
        if propagation != api.PROPAGATION_PRIVATE:
            if mountinfo is None:
                with open("/proc/self/mountinfo", encoding="utf-8") as f:
                    mountinfo = f.read()
            _check_propagation(source, propagation, mountinfo)
            wanted.add(_PROPAGATION_OPTION[propagation])
        options = ["rbind", _PROPAGATION_OPTION[propagation]]
        readonly = mount.readonly
        if mount.recursive_read_only:
            if not readonly:
                raise InvalidArgument(f"mount: recursive read-only conflicts with a read-write "
                                      f"mount of {host}")
            if propagation != api.PROPAGATION_PRIVATE:
                raise InvalidArgument(f"mount: recursive read-only needs private propagation "
                                      f"for {host}, got {api.MountPropagation.Name(propagation)}")
            if "rro" not in node.mount_options:
                raise InvalidArgument(f"mount: the OCI runtime cannot make {host} recursively "
                                      "read-only (its features list no 'rro')")
            options.append("rro")
        else:
            options.append("ro" if readonly else "rw")
        result.append(_mount(destination, "bind", source, options))
    rootfs_propagation = ("rshared" if "rshared" in wanted
                          else "rslave" if "rslave" in wanted else None)
    return result, rootfs_propagation


def check_image_mount(mount: api.Mount) -> str:
    """An image mount's ``image_sub_path``, checked: read-only (the CRI
    says so), relative and inside the image."""
    if not mount.readonly:
        raise InvalidArgument(f"mount: the image volume {shorten(mount.container_path)} must be "
                              "read-only")
    sub = mount.image_sub_path
    if sub.startswith("/") or ".." in sub.split("/") or "\0" in sub:
        raise InvalidArgument(f"mount: image_sub_path {shorten(sub)} must be a path inside the "
                              "image (relative, without '..')")
    return posixpath.normpath(sub) if sub else ""


def _image_mount(destination: str, root: str, mount: api.Mount) -> Mount:
    """A read-only bind of the mounted image, or of a directory in it.
    Exec stays allowed: an image volume may carry tools to run."""
    sub = check_image_mount(mount)
    source = os.path.join(root, sub) if sub else root
    # The image's own symlinks must not lead out of it.
    real = os.path.realpath(source)
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        raise InvalidArgument(f"mount: image_sub_path {shorten(sub)} leads out of the image")
    if not os.path.exists(real):
        raise NotFound(f"mount: image_sub_path {shorten(sub)} does not exist in image "
                       f"{shorten(mount.image.image)}")
    return _mount(destination, "bind", real, ["rbind", "rprivate", "ro", "nosuid", "nodev"])


def _depth(mount: Mount) -> int:
    return str(mount["destination"]).rstrip("/").count("/")


def merge(defaults: Iterable[Mount], requested: Iterable[Mount]) -> list[Mount]:
    """Defaults not overridden by a CRI mount, plus the CRI mounts, parents first."""
    cri_list = list(requested)
    taken = {str(m["destination"]) for m in cri_list}
    kept = [m for m in defaults
            if m["destination"] not in taken
            and not ("/dev" in taken and str(m["destination"]).startswith("/dev/"))
            and not ("/sys" in taken and str(m["destination"]).startswith("/sys/"))]
    return sorted(kept + cri_list, key=_depth)
