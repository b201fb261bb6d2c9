"""The ``podvisor`` command: run the daemon, show worker status, print the
effective configuration.

    podvisor [run]          run the daemon (the default)
    podvisor status [--json]
    podvisor config         the effective configuration as TOML

The configuration flags (CRI-O's names) are accepted by every subcommand,
so ``podvisor --runroot /tmp/x status`` finds a daemon started with the same
flag.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.request
from typing import Any

from ..proto import malloc
from . import config as cfg

STATUS_TIMEOUT = 5.0
# malloc arenas: the main thread's and one for gRPC's C threads (proto/malloc.py).
SUPERVISOR_ARENAS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podvisor", description=__doc__.split("\n")[0])
    cfg.add_flags(parser)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the daemon (default)")
    status = sub.add_parser("status", help="show every worker of a running daemon")
    status.add_argument("--json", action="store_true", help="print the raw JSON document")
    sub.add_parser("config", help="print the effective configuration as TOML")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = cfg.load(args.config, args.config_dir, cfg.flag_overrides(args))
    except cfg.ConfigError as exc:
        print(f"podvisor: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        sys.stdout.write(cfg.dump(config))
        return 0
    if args.command == "status":
        return show_status(config, as_json=args.json)
    return run_daemon(config)


def run_daemon(config: cfg.Config) -> int:
    from . import logs
    from .daemon import Daemon, DaemonError

    malloc.limit_arenas(SUPERVISOR_ARENAS)  # before gRPC and the executor start threads
    logs.configure(cfg.python_log_level(config.log_level), config.log_format)
    try:
        return asyncio.run(Daemon(config).run())
    except DaemonError as exc:
        print(f"podvisor: {exc}", file=sys.stderr)
        return 1


def status_address(config: cfg.Config) -> str:
    """Where the daemon's health endpoint is: health.addr, else the config."""
    try:
        with open(os.path.join(config.runroot, "health.addr"), encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return f"{config.metrics.metrics_host}:{config.metrics.metrics_port}"


def fetch_status(address: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{address}/status", timeout=STATUS_TIMEOUT) as resp:
        doc: dict[str, Any] = json.load(resp)
    return doc


def show_status(config: cfg.Config, *, as_json: bool) -> int:
    address = status_address(config)
    try:
        doc = fetch_status(address)
    except OSError as exc:
        print(f"podvisor: no daemon answers at http://{address}/status: {exc}", file=sys.stderr)
        return 1
    if as_json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(format_status(doc))
    return 0


def format_status(doc: dict[str, Any]) -> str:
    header = ("POOL", "INDEX", "PID", "STATE", "UPTIME", "RESTARTS", "INFLIGHT", "RSS", "CPU%")
    rows = [header]
    for w in doc["workers"]:
        rows.append((w["pool"], str(w["index"]), str(w["pid"] or "-"), w["state"],
                     _duration(w["uptime"]), str(w["restarts"]), str(w["inflight"]),
                     _size(w["rss"]), f"{w['cpu_percent']:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip()
             for r in rows]
    return f"supervisor pid {doc['pid']}\n" + "\n".join(lines) + _streaming(doc)


def _streaming(doc: dict[str, Any]) -> str:
    if "streaming" not in doc:
        return ""
    stats = doc["streaming"]
    if stats is None:
        return "\nstreaming: the stream worker does not answer"
    if stats.get("started") is False:
        return f"\nstreaming: {stats['note']}"
    active = ", ".join(f"{kind} {count}" for kind, count in stats["active"].items())
    return (f"\nstreaming: {stats['url']}, sessions: {active}, "
            f"unused URLs: {stats['tokens']}")


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f}{unit}"
        n //= 1024
    return f"{n}TiB"


if __name__ == "__main__":
    raise SystemExit(main())
