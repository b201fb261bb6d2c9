"""Bundles whose config.json comes from podvisor's spec builder, run under real runc/crun.

The rootfs holds Debian's static busybox with one symlink per applet, an
/etc/passwd and /etc/group chosen by the test, and the directories the
tests use as working dirs. The pod is a host-namespace pod (no netns, IPC
or UTS namespace of its own), so a test needs nothing but the runtime.

``run`` runs the container in the foreground with a private ``--root``
under the test's tmp dir and a unique id, captures its output, then
always ``delete -f``s it and removes the cgroup dirs it may have left
(one level below each hierarchy's root, ``/podvisor-<id>``, so there is no
parent dir to clean).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from podvisor.workers.runtime.spec import PodContext, bounding_caps

BUSYBOX = Path("/bin/busybox")
RUNTIMES = {"runc": "/usr/sbin/runc", "crun": "/usr/bin/crun"}
CGROUP_ROOT = Path("/sys/fs/cgroup")
RUN_TIMEOUT = 60.0


def make_rootfs(rootfs: Path, passwd: str, group: str) -> Path:
    for name in ("bin", "dev", "proc", "sys", "tmp", "etc", "work"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        # "busybox" is itself in the list: linking it would replace the binary.
        if applet != "busybox" and "/" not in applet:
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text(passwd)
    (rootfs / "etc" / "group").write_text(group)
    return rootfs


def host_pod(base: Path, **changes: Any) -> PodContext:
    """A pod on the host's namespaces, with its own resolv.conf, hosts and hostname files."""
    files = base / "podfiles"
    files.mkdir(parents=True, exist_ok=True)
    (files / "resolv.conf").write_text("nameserver 192.0.2.53\nsearch spec.test\n")
    (files / "hosts").write_text("127.0.0.1 localhost\n192.0.2.7 spec-pod\n")
    (files / "hostname").write_text("spec-pod\n")
    pod = PodContext(
        sandbox_id=uuid.uuid4().hex, hostname="spec-pod", cgroup_parent="/",
        netns_path=None, ipc_ns_path=None, uts_ns_path=None, pid_ns_path=None, shm_path=None,
        resolv_conf=str(files / "resolv.conf"), hosts_file=str(files / "hosts"),
        hostname_file=str(files / "hostname"), privileged_caps=bounding_caps(),
        oom_score_adj_floor=int(Path("/proc/self/oom_score_adj").read_text()))
    return replace(pod, **changes)


def cgroup_dirs(name: str) -> list[Path]:
    """Every cgroup dir called ``name`` one level below a hierarchy's root."""
    found = [CGROUP_ROOT / name] if (CGROUP_ROOT / name).is_dir() else []
    found += [d / name for d in CGROUP_ROOT.iterdir() if (d / name).is_dir()]
    return found


@dataclass
class Runtime:
    name: str
    root: Path

    @property
    def binary(self) -> str:
        return RUNTIMES[self.name]

    def cmd(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    def listed(self) -> list[str]:
        out = subprocess.run(self.cmd("list", "-q"), capture_output=True, text=True, check=False)
        return out.stdout.split()

    def run(self, bundle: Path, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """Write ``spec`` as the bundle's config.json and run it to completion."""
        (bundle / "config.json").write_text(json.dumps(spec, indent=2))
        cid = "pvspec-" + uuid.uuid4().hex[:12]
        try:
            return subprocess.run(self.cmd("run", "--bundle", str(bundle), cid),
                                  capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                  stdin=subprocess.DEVNULL, check=False)
        finally:
            subprocess.run(self.cmd("delete", "-f", cid), capture_output=True, check=False)
            for leftover in cgroup_dirs(str(spec["linux"]["cgroupsPath"]).lstrip("/")):
                with contextlib.suppress(OSError):
                    os.rmdir(leftover)
