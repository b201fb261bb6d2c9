"""Command lines for the OCI runtime (runc or crun), and its error messages.

Both runtimes take the same global options (``--root``, ``--log``,
``--log-format json``) and the same ``create``/``exec`` flags used here, and
both write every error as a JSON line ``{"level": "error", "msg": ...}`` to
``--log`` as well as to stderr. conmon reads the log: in pipe mode the
runtime's stderr is the container's stderr, which must not be mistaken for
runtime messages once the container runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    path: str
    root: str
    log_path: str
    systemd_cgroup: bool = False

    def _global(self) -> list[str]:
        driver = ["--systemd-cgroup"] if self.systemd_cgroup else []
        return [self.path, "--root", self.root, *driver, "--log", self.log_path,
                "--log-format", "json"]

    def create(self, cid: str, bundle: str, pid_file: str, console_socket: str | None) -> list[str]:
        argv = [*self._global(), "create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            argv += ["--console-socket", console_socket]
        return [*argv, cid]

    def exec(self, cid: str, pid_file: str, process: str | None, args: list[str]) -> list[str]:
        # --detach: the runtime exits once the process runs, passing it our
        # stdio as is; without it runc copies the output through pipes of
        # its own and waits for their EOF, which a background child holds.
        argv = [*self._global(), "exec", "--detach", "--pid-file", pid_file]
        if process:
            return [*argv, "--process", process, cid]
        return [*argv, cid, *args]

    def delete(self, cid: str) -> list[str]:
        return [*self._global(), "delete", "--force", cid]

    def errors(self) -> str:
        """The runtime's error messages so far, one per line."""
        messages = []
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                        messages.append(str(entry.get("msg", "")))
        except OSError:
            pass
        return "\n".join(dict.fromkeys(messages))
