"""The command line of podvisor-conmon (contract.py documents it in full).

Arguments are checked before anything forks, so a bad command line fails
in the spawned process itself: exit status 2 and a message on stderr, as
argparse does, before any sync line could be expected.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .contract import EXEC_OUTPUT_MAX

if TYPE_CHECKING:
    from .monitor import MonitorOptions

# sun_path is 108 bytes with its NUL; "/console" is the longest name we bind.
SOCKET_PATH_MAX = 107 - len("/console")


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """Built once per process: the zygote (zygote.py) builds it before it
    forks, so that its monitors share it instead of each building one."""
    parser = argparse.ArgumentParser(prog="podvisor-conmon",
                                     description="podvisor's per-container monitor")
    commands = parser.add_subparsers(dest="command", required=True)

    monitor = commands.add_parser("monitor", help="create a container and monitor it, detached")
    _common(monitor)
    monitor.add_argument("--bundle", required=True, help="OCI bundle dir")
    monitor.add_argument("--state-dir", required=True, help="sockets and pid files")
    monitor.add_argument("--exit-dir", required=True, help="where <id> is written at exit")
    monitor.add_argument("--log-path", required=True, help="the CRI log file")
    monitor.add_argument("--terminal", action="store_true", help="a pty from the runtime")
    monitor.add_argument("--stdin", action="store_true", help="keep the container's stdin open")
    monitor.add_argument("--stdin-once", action="store_true",
                         help="close stdin when the first attach session ends")
    monitor.add_argument("--sync-fd", type=int, help="fd for the one-line JSON create result")
    monitor.add_argument("--create-timeout", type=float, default=240.0, metavar="SECONDS")

    zygote = commands.add_parser(
        "zygote", help="fork monitors on request from one preloaded process (zygote.py)")
    zygote.add_argument("run_dir", metavar="DIR", help="where its socket and lock are")

    exec_ = commands.add_parser("exec", help="run a command in a container (ExecSync)")
    _common(exec_)
    exec_.add_argument("--timeout", type=float, required=True,
                       help="seconds; 0 waits for ever")
    exec_.add_argument("--output-max", type=int, default=EXEC_OUTPUT_MAX, metavar="BYTES",
                       help="cap of stdout and of stderr each")
    exec_.add_argument("--process", help="an OCI process.json instead of ARG...")
    exec_.add_argument("args", nargs="*", metavar="ARG")
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", required=True, dest="cid", metavar="ID", help="container id")
    parser.add_argument("--runtime", required=True, help="path of runc or crun")
    parser.add_argument("--runtime-root", required=True, help="the runtime's --root")
    parser.add_argument("--systemd-cgroup", action="store_true",
                        help="the runtime's --systemd-cgroup (the systemd cgroup driver)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "zygote":
        from .zygote import main as run_zygote
        return run_zygote(os.path.abspath(args.run_dir))
    if args.command == "exec":
        if bool(args.process) == bool(args.args):
            parser.error("exec needs --process FILE or -- ARG..., not both")
        if args.timeout < 0 or args.output_max < 0:
            parser.error("--timeout and --output-max must not be negative")
        # Imported per mode: a monitor stays resident for its container's
        # life, so what it never uses should not sit in its memory.
        from .execsync import ExecOptions
        from .execsync import run as run_exec
        return run_exec(ExecOptions(
            cid=args.cid, runtime=args.runtime, runtime_root=args.runtime_root,
            systemd_cgroup=args.systemd_cgroup, timeout=args.timeout,
            output_max=args.output_max, process=args.process, args=tuple(args.args)))
    from .monitor import start
    return start(_monitor_options(parser, args))


def warm_up() -> None:
    """Build the parser and run one parse, for a zygote about to fork."""
    parse_monitor(["monitor", "--id", "warm-up", "--bundle", "/", "--runtime", "/",
                   "--runtime-root", "/", "--state-dir", "/", "--exit-dir", "/",
                   "--log-path", "/"])


def parse_monitor(argv: Sequence[str]) -> MonitorOptions:
    """The options of ``monitor ARG...``, checked as ``main`` checks them:
    SystemExit(2), the message on stderr, for a bad command line. The
    zygote parses in its own process, so that its forks need not."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "monitor":
        parser.error("the zygote runs only the monitor command")
    return _monitor_options(parser, args)


def _monitor_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> MonitorOptions:
    state_dir = os.path.abspath(args.state_dir)
    if len(state_dir.encode()) > SOCKET_PATH_MAX:
        parser.error(f"--state-dir must be at most {SOCKET_PATH_MAX} bytes (unix sockets)")
    if args.stdin_once and not args.stdin:
        parser.error("--stdin-once needs --stdin")
    if args.sync_fd is not None:
        try:
            os.fstat(args.sync_fd)
        except OSError:
            parser.error(f"--sync-fd {args.sync_fd} is not an open fd")
    from .monitor import MonitorOptions
    return MonitorOptions(
        cid=args.cid, bundle=os.path.abspath(args.bundle), runtime=args.runtime,
        runtime_root=args.runtime_root, systemd_cgroup=args.systemd_cgroup,
        state_dir=state_dir,
        exit_dir=os.path.abspath(args.exit_dir), log_path=os.path.abspath(args.log_path),
        terminal=args.terminal, stdin=args.stdin, stdin_once=args.stdin_once,
        sync_fd=args.sync_fd, create_timeout=args.create_timeout)
