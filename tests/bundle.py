"""OCI bundles for tests, and containers run from them under runc or crun.

A bundle is a rootfs holding Debian's static busybox (``/bin/busybox`` plus
one symlink per applet; busybox sh runs most applets in-process), an
/etc/passwd (and /etc/group) chosen by the test, the directories the tests
use as working dirs, and a config.json: either ``config``'s (``runc
spec``'s defaults) or one from podvisor's spec builder.

``config`` writes ``runc spec``'s defaults: no ``process.oomScoreAdj``
(lowering it needs CAP_SYS_RESOURCE, which this host lacks) and the three
default capabilities, which every bounding set holds. Each container gets
its own top-level cgroup (``/pvtest-<id>``) so that ``delete`` leaves no
parent dir behind.

``spawn`` starts conmon the way the runtime worker does: a sync pipe, wait
for the spawned process (it detaches at once), then read the sync line
before a deadline. ``Container.cleanup`` deletes the container (``delete
-f``), removes cgroup dirs left behind, and waits for conmon to go, by the
pid conmon reported; nothing is ever killed by name.

``Runtime.run_bundle`` runs a container in the foreground under the
runtime's private ``--root`` with a unique id, captures its output, then
always ``delete -f``s it and removes the cgroup dirs it may have left (one
level below each hierarchy's root, so there is no parent dir to clean).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from daemonlib import poll_until

BUSYBOX = Path("/bin/busybox")
CONMON = str(Path(sys.executable).with_name("podvisor-conmon"))
RUNTIMES = {"runc": "/usr/sbin/runc", "crun": "/usr/bin/crun"}
CGROUP_ROOT = Path("/sys/fs/cgroup")
SPAWN_TIMEOUT = 30.0
RUN_TIMEOUT = 60.0
ROOT_PASSWD = "root:x:0:0:root:/:/bin/sh\n"


def make_rootfs(rootfs: Path, passwd: str = ROOT_PASSWD, group: str | None = None) -> Path:
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
    if group is not None:
        (rootfs / "etc" / "group").write_text(group)
    return rootfs


def config(args: list[str], cgroups_path: str, *, terminal: bool = False,
           memory_limit: int | None = None, pid_namespace: bool = True) -> dict[str, Any]:
    """``runc spec``'s defaults, with a writable root and our cgroup."""
    namespaces = ["pid", "network", "ipc", "uts", "mount"][0 if pid_namespace else 1:]
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if memory_limit is not None:
        resources["memory"] = {"limit": memory_limit}
    nosuid_noexec_nodev = ["nosuid", "noexec", "nodev"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm"],
            "cwd": "/",
            "capabilities": {kind: caps for kind in
                             ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "pvtest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": [*nosuid_noexec_nodev, "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": nosuid_noexec_nodev},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": [*nosuid_noexec_nodev, "ro"]},
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": resources,
            "namespaces": [{"type": t} for t in namespaces],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }


def runtime_unusable(name: str) -> str | None:
    """Why ``name`` can't run containers on this host, or None."""
    if not os.access(RUNTIMES[name], os.X_OK):
        return f"{RUNTIMES[name]} is not installed"
    controllers = CGROUP_ROOT / "unified" / "cgroup.controllers"
    if name == "crun" and controllers.exists() and controllers.read_text().strip():
        # crun refuses cgroup v1+v2 hybrids whose v2 half holds a controller.
        return (f"crun refuses this hybrid cgroup host: {controllers} lists "
                f"{controllers.read_text().strip()!r} (mount that controller as v1 to fix)")
    return None


def runtime_or_skip(name: str) -> Runtime:
    """``name`` with its ``--root`` in a new short tmp dir (``root.parent``,
    the caller's to remove); skips the test if it can't run here."""
    reason = runtime_unusable(name)
    if reason:
        pytest.skip(reason)
    return Runtime(name, short_tmpdir() / "root")


def cgroup_dirs(name: str) -> list[Path]:
    """Every cgroup dir called ``name`` one level below a hierarchy's root."""
    found = [CGROUP_ROOT / name] if (CGROUP_ROOT / name).is_dir() else []
    found += [d / name for d in CGROUP_ROOT.iterdir() if (d / name).is_dir()]
    return found


@dataclass
class Runtime:
    """runc or crun with a private ``--root``."""

    name: str
    root: Path

    @property
    def path(self) -> str:
        return RUNTIMES[self.name]

    def cmd(self, *args: str) -> list[str]:
        return [self.path, "--root", str(self.root), *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), capture_output=True, text=True, check=check,
                              timeout=RUN_TIMEOUT)

    def state(self, cid: str) -> dict[str, Any] | None:
        out = self.run("state", cid, check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def listed(self) -> list[str]:
        return self.run("list", "-q", check=False).stdout.split()

    def run_bundle(self, bundle: Path, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
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


class SpawnError(Exception):
    pass


def spawn(argv: list[str], timeout: float = SPAWN_TIMEOUT) -> dict[str, Any]:
    """Run ``podvisor-conmon monitor`` as the runtime worker does; the sync
    message, or SpawnError with what conmon or the runtime said."""
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen([CONMON, *argv, "--sync-fd", str(write_fd)],
                                pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    finally:
        os.close(write_fd)
    deadline = time.monotonic() + timeout
    with os.fdopen(read_fd, "rb") as sync:
        # The spawned process only forks: it exits before create is done.
        _, stderr = proc.communicate(timeout=timeout)
        line = b""
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sync], [], [], left)[0]:
                break
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            line += chunk
    if not line:
        raise SpawnError(f"conmon exited {proc.returncode} with no sync line: "
                         f"{stderr.decode(errors='replace')}")
    message: dict[str, Any] = json.loads(line)
    if "error" in message:
        raise SpawnError(message["error"])
    return message


@dataclass
class Container:
    """One container under conmon, with everything a test needs to check it."""

    runtime: Runtime
    base: Path
    id: str = field(default_factory=lambda: f"pvt-{uuid.uuid4().hex[:12]}")
    pid: int = 0
    conmon_pid: int = 0

    @property
    def bundle(self) -> Path:
        return self.base / "bundle"

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    @property
    def exit_dir(self) -> Path:
        return self.base / "exits"

    @property
    def log_path(self) -> Path:
        return self.base / "ctr.log"

    @property
    def cgroups_path(self) -> str:
        return f"/pvtest-{self.id}"

    def make_bundle(self, args: list[str], **kwargs: Any) -> None:
        make_rootfs(self.bundle / "rootfs")
        (self.bundle / "config.json").write_text(
            json.dumps(config(args, self.cgroups_path, **kwargs)))

    def monitor_argv(self, *flags: str) -> list[str]:
        return ["monitor", "--id", self.id, "--bundle", str(self.bundle),
                "--runtime", self.runtime.path, "--runtime-root", str(self.runtime.root),
                "--state-dir", str(self.state_dir), "--exit-dir", str(self.exit_dir),
                "--log-path", str(self.log_path), *flags]

    def spawn(self, *flags: str) -> Container:
        message = spawn(self.monitor_argv(*flags))
        self.pid, self.conmon_pid = message["pid"], message["conmon_pid"]
        return self

    def start(self) -> None:
        self.runtime.run("start", self.id)

    def exit_record(self, timeout: float = 20.0) -> dict[str, Any]:
        path = self.exit_dir / self.id
        poll_until(path.exists, timeout, what=f"exit file {path}")
        record: dict[str, Any] = json.loads(path.read_text())
        return record

    def log_records(self, path: Path | None = None) -> list[tuple[str, str, str, str]]:
        """(timestamp, stream, tag, text) of every record."""
        records = []
        for line in (path or self.log_path).read_bytes().split(b"\n")[:-1]:
            stamp, stream, tag, text = line.decode().split(" ", 3)
            records.append((stamp, stream, tag, text))
        return records

    def log_texts(self, path: Path | None = None) -> list[tuple[str, str]]:
        return [(stream, text) for _, stream, tag, text in self.log_records(path)
                if tag == "F"]

    def ctl(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.state_dir / "ctl"))
            sock.sendall(command.encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(4096)
                assert chunk, f"ctl closed before replying to {command!r}"
                reply += chunk
        return reply.decode().rstrip("\n")

    def conmon_alive(self) -> bool:
        return process_alive(self.conmon_pid)

    def cleanup(self) -> None:
        """Delete the container, its cgroups, and see conmon gone."""
        if self.runtime.state(self.id) is not None:
            self.runtime.run("delete", "-f", self.id, check=False)
        for leftover in cgroup_dirs(self.cgroups_path.lstrip("/")):
            with contextlib.suppress(OSError):
                leftover.rmdir()
        if self.conmon_pid:
            # conmon exits on its own once the container is gone; it is not
            # our child (it detached), so we watch its pid, not wait for it.
            try:
                poll_until(lambda: not self.conmon_alive(), 15, what="conmon exit")
            finally:
                if self.conmon_alive() and comm(self.conmon_pid) == "podvisor-conmon":
                    os.kill(self.conmon_pid, signal.SIGKILL)


def process_alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a late reaper."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def short_tmpdir() -> Path:
    """A dir short enough for unix socket paths below it."""
    return Path(tempfile.mkdtemp(prefix="pvc-"))
