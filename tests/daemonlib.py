"""A real podvisor daemon on a private run dir, a CRI client on the
generated stubs, and ``poll_until``.

Every daemon a test starts runs in its own session; teardown SIGTERMs the
pid we started, waits, then SIGKILLs its process group, so no worker
survives a failed test. Paths are short (``/tmp/pv-XXXX``) because unix
socket paths are limited to 107 bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from podvisor.proto import api_pb2_grpc

T = TypeVar("T")

PODVISOR = str(Path(sys.executable).with_name("podvisor"))
START_TIMEOUT = 20.0
# A worker that serves, or one of an on-demand pool no call has needed yet.
UP_STATES = ("READY", "NOT_STARTED")


def poll_until(predicate: Callable[[], T], timeout: float, interval: float = 0.05,
               what: str = "condition") -> T:
    """Call ``predicate`` until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except Exception as exc:  # the daemon may be mid-restart
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last: {last!r}")
        time.sleep(interval)


@dataclass
class Daemon:
    """One podvisor process started by a test, and how to reach it."""

    base: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def runroot(self) -> Path:
        return self.base / "run"

    @property
    def socket(self) -> Path:
        return self.runroot / "podvisor.sock"

    @property
    def config_path(self) -> Path:
        return self.base / "podvisor.toml"

    @property
    def log_path(self) -> Path:
        return self.base / "daemon.log"

    @property
    def cni_dir(self) -> Path:
        return self.base / "net.d"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the ``podvisor`` command against this daemon's configuration."""
        return subprocess.run([PODVISOR, "--config", str(self.config_path),
                               "--config-dir", str(self.base / "conf.d"), *args],
                              capture_output=True, text=True, timeout=30, check=False)

    def start(self, wait_ready: bool = True) -> Daemon:
        # A killed daemon leaves its socket and health address behind; waiting
        # for them must mean waiting for the new daemon's.
        for stale in (self.socket, self.runroot / "health.addr"):
            stale.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [PODVISOR, "--config", str(self.config_path),
             "--config-dir", str(self.base / "conf.d"), "run"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env,
            start_new_session=True)
        log.close()
        poll_until(self.socket.exists, START_TIMEOUT, what="CRI socket")
        if wait_ready:
            poll_until(self.all_ready, START_TIMEOUT, what="every worker READY")
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        return self

    def status(self) -> dict[str, Any]:
        """The health endpoint's JSON document."""
        addr = (self.runroot / "health.addr").read_text().strip()
        with urllib.request.urlopen(f"http://{addr}/status", timeout=5) as resp:
            doc: dict[str, Any] = json.load(resp)
        return doc

    def metrics(self) -> str:
        addr = (self.runroot / "health.addr").read_text().strip()
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def workers(self) -> dict[tuple[str, int], dict[str, Any]]:
        return {(w["pool"], w["index"]): w for w in self.status()["workers"]}

    def all_ready(self) -> bool:
        """Every worker READY, but for an on-demand pool's that no call has
        needed yet (the stream pool's, by default)."""
        return all(w["state"] in UP_STATES for w in self.status()["workers"])

    def worker_pids(self) -> list[int]:
        """The pids of the workers that run (a not-started one has none)."""
        return [w["pid"] for w in self.status()["workers"] if w["pid"] is not None]

    @property
    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the daemon we started, then SIGKILL its whole session."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None:
            return None
        code = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout)
        else:
            code = self.proc.returncode
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers share its process group
        self.proc.wait()
        self._keep_log()
        return code

    def _keep_log(self) -> None:
        """Copy the daemon's log where ``PODVISOR_CI_LOGS`` says (.ci/run sets
        it), so a failure's traceback outlives the test's temporary dirs."""
        keep = os.environ.get("PODVISOR_CI_LOGS")
        if keep and self.log_path.exists():
            with contextlib.suppress(OSError):  # a copy for the reader, never a failure
                shutil.copyfile(self.log_path,
                                Path(keep) / f"{self.base.name}-{time.time_ns()}.log")

    def remove_leftovers(self) -> list[str]:
        """Whatever a failed test left running or mounted under this daemon's
        dirs: containers (by runtime root), monitors (by their pid files),
        mounts. Returns what it found, so a test can also assert on it."""
        found = []
        for runtime, root in (("runc", "runc"), ("crun", "crun")):
            state = self.runroot / root
            if not state.is_dir():
                continue
            out = subprocess.run([runtime, "--root", str(state), "list", "-q"],
                                 capture_output=True, text=True, check=False).stdout
            for cid in out.split():
                found.append(f"{runtime} container {cid}")
                subprocess.run([runtime, "--root", str(state), "delete", "--force", cid],
                               capture_output=True, check=False)
        for pidfile in (self.runroot / "c").glob("*/conmon.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text())
                if b"podvisor-conmon" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(f"conmon {pid}")
                    os.kill(pid, signal.SIGKILL)
        for mount in sorted(self.mounts(), key=len, reverse=True):
            found.append(f"mount {mount}")
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        return found

    def mounts(self) -> list[str]:
        prefix = str(self.base) + "/"
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children_of(pid: int) -> dict[int, bytes]:
    """Live children of ``pid``: their cmdline (as setproctitle left it)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not pid_alive(int(entry.name)):
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().rstrip(b"\0")
    return found


def interrupt(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a client we started as Ctrl-C would, by its pid; SIGKILL if it
    lingers past ``grace``."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_config(base: Path, workers: dict[str, Any] | None = None,
                 extra: str = "") -> None:
    sizes = {"image": 1, "storage": 1, "runtime": 2, "net": 2, **(workers or {})}
    lines = [
        "[podvisor]",
        f'root = "{base / "root"}"',
        f'runroot = "{base / "run"}"',
        'log_level = "debug"',
        "[podvisor.network]",
        f'network_dir = "{base / "net.d"}"',
        "[podvisor.metrics]",
        "metrics_port = 0",
        "[podvisor.workers]",
        *(f"{k} = {json.dumps(v)}" for k, v in sizes.items()),
        extra,
    ]
    (base / "podvisor.toml").write_text("\n".join(lines) + "\n")
    (base / "conf.d").mkdir(exist_ok=True)


