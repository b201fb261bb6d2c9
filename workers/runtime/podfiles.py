"""The files every container of a pod shares: /etc/hostname, /etc/hosts,
/etc/resolv.conf, and the pod's /dev/shm.

resolv.conf follows the CRI DNSConfig (servers, searches, options) and
copies the node's when the pod gives none, as CRI-O does. The hosts file
names localhost and the pod's hostname; the kubelet bind-mounts its own
managed hosts file over it for ordinary pods. /dev/shm is a tmpfs of
``SHM_SIZE`` (CRI-O's 64 MiB) unless the pod shares the node's IPC.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from ...proto import api_pb2 as api
from ...proto.idmap import IdMap
from .. import mounts
from ..records import write_atomic
from ..userns import map_id

SHM_SIZE = 64 * 1024 * 1024
HOST_RESOLV_CONF = "/etc/resolv.conf"


def resolv_conf(dns: api.DNSConfig | None) -> bytes | None:
    """The pod's resolv.conf, or None to copy the node's."""
    if dns is None:
        return None
    servers, searches, options = list(dns.servers), list(dns.searches), list(dns.options)
    if not (servers or searches or options):
        return None
    lines = [f"nameserver {s}" for s in servers]
    if searches:
        lines.append("search " + " ".join(searches))
    if options:
        lines.append("options " + " ".join(options))
    return ("\n".join(lines) + "\n").encode()


def hosts(hostname: str, ips: list[str]) -> bytes:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{ip}\t{hostname}" for ip in ips]
    return ("\n".join(lines) + "\n").encode()


def write(pod_dir: str, hostname: str, dns: api.DNSConfig | None,
          ips: list[str], idmap: IdMap | None = None) -> dict[str, str]:
    """Write the shared files; return {"hostname", "hosts", "resolv_conf"} paths.
    In a pod with its own user namespace they belong to its root."""
    os.makedirs(pod_dir, mode=0o755, exist_ok=True)
    paths = {name: os.path.join(pod_dir, name)
             for name in ("hostname", "hosts", "resolv_conf")}
    # Under the run dir (the pod dir), which no power loss is survived by:
    # atomic, not flushed (write_atomic).
    write_atomic(paths["hostname"], f"{hostname}\n".encode(), durable=False)
    write_atomic(paths["hosts"], hosts(hostname, ips), durable=False)
    content = resolv_conf(dns)
    if content is None:
        shutil.copyfile(HOST_RESOLV_CONF, paths["resolv_conf"])
    else:
        write_atomic(paths["resolv_conf"], content, durable=False)
    if idmap is not None:
        owner = _root_of(idmap)
        for path in paths.values():
            os.chown(path, *owner)
    return paths


def _root_of(idmap: IdMap) -> tuple[int, int]:
    """The host uid and gid of the pod's root (its maps always map id 0)."""
    uid, gid = map_id(0, idmap.uids), map_id(0, idmap.gids)
    assert uid is not None and gid is not None
    return uid, gid


def mount_shm(pod_dir: str, idmap: IdMap | None = None) -> str:
    path = os.path.join(pod_dir, "shm")
    os.makedirs(path, mode=0o755, exist_ok=True)
    owner = "" if idmap is None else ",uid={},gid={}".format(*_root_of(idmap))
    if not mounts.is_mountpoint(path):
        mounts.mount("shm", path, "tmpfs", mounts.MS_NOSUID | mounts.MS_NODEV
                     | mounts.MS_NOEXEC, f"mode=1777,size={SHM_SIZE}{owner}")
    return path


def unmount_shm(pod_dir: str) -> None:
    path = os.path.join(pod_dir, "shm")
    if os.path.isdir(path):
        mounts.unmount(path)
        with contextlib.suppress(OSError):
            os.rmdir(path)
