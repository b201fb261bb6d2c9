"""The rooms stay clear (style.md section 6): each folder imports only what
its row of the table allows, and nothing imports a bare top-level
``supervisor``, ``proto`` or ``workers``."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# _typeshed exists only for type checkers (under TYPE_CHECKING).
STDLIB = sys.stdlib_module_names | {"_typeshed"}
GENERATED = {"api_pb2.py", "api_pb2_grpc.py"}

# room -> (allowed third-party top-level modules, allowed podvisor rooms)
RULES: dict[str, tuple[set[str], set[str]]] = {
    "proto": ({"msgpack", "msgspec", "google"}, {"proto"}),
    "supervisor": ({"grpc", "zmq", "psutil", "prometheus_client", "setproctitle", "google",
                    "msgpack"}, {"proto", "supervisor"}),
    # google: the protobuf runtime under the generated CRI stubs, with which
    # a worker parses the CRI messages that travel serialized.
    "workers": ({"zmq", "setproctitle", "google"}, {"proto", "workers"}),
    # jeepney: systemd's D-Bus API, for the systemd cgroup driver; yaml:
    # CDI device specs.
    "workers/runtime": ({"zmq", "setproctitle", "google", "jeepney", "yaml"},
                        {"proto", "workers", "workers/runtime"}),
    "workers/net": ({"zmq", "setproctitle"}, {"proto", "workers", "workers/net"}),
    # urllib3: registry HTTP, its pools and proxies.
    "workers/image": ({"zmq", "setproctitle", "cryptography", "google", "urllib3"},
                      {"proto", "workers", "workers/image"}),
    # zlib_ng: the faster inflate behind gzip layers.
    "workers/storage": ({"zmq", "setproctitle", "zstandard", "zlib_ng"},
                        {"proto", "workers", "workers/storage"}),
    # h11 and wsproto: the streaming server's HTTP upgrades and WebSockets.
    "workers/stream": ({"zmq", "setproctitle", "h11", "wsproto"},
                       {"proto", "workers", "workers/stream"}),
    "conmon": (set(), {"conmon"}),
}
POOLS = ("image", "storage", "runtime", "net", "stream")


def room_of(path: Path) -> str:
    rel = path.relative_to(REPO)
    if rel.parts[0] == "workers" and len(rel.parts) > 2:
        return f"workers/{rel.parts[1]}"
    return rel.parts[0]


def resolve(path: Path, node: ast.ImportFrom) -> str:
    """The repo-relative room a relative import lands in ('' for absolute)."""
    if node.level == 0:
        return ""
    package = path.parent.relative_to(REPO).parts
    base = package[: len(package) - (node.level - 1)]
    target = [*base, *(node.module.split(".") if node.module else [])]
    if target[:1] == ["workers"] and len(target) > 1 and target[1] in POOLS:
        return f"workers/{target[1]}"
    return target[0] if target else ""


def sources() -> list[Path]:
    files = []
    for room in ("proto", "supervisor", "workers", "conmon"):
        files += [p for p in (REPO / room).rglob("*.py") if p.name not in GENERATED]
    return files


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_respect_the_rooms(path: Path) -> None:
    room = room_of(path)
    rule_room = room if room in RULES else "workers"
    allowed_third, allowed_rooms = RULES[rule_room]
    if room.startswith("workers/"):
        allowed_third = RULES.get(room, RULES["workers"])[0]
        allowed_rooms = {"proto", "workers", room}
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(path, node)
            assert target in allowed_rooms, (
                f"{path.relative_to(REPO)}:{node.lineno} imports from {target}/")
            continue
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top not in {"supervisor", "proto", "workers", "conmon"}, (
                f"{path.relative_to(REPO)}:{node.lineno}: bare import of {name}")
            if top == "podvisor":
                pytest.fail(f"{path.relative_to(REPO)}:{node.lineno}: use a relative import")
            assert top in STDLIB or top in allowed_third or top == "__future__", (
                f"{path.relative_to(REPO)}:{node.lineno}: {room} may not import {name}")


def test_tests_never_import_bare_room_names() -> None:
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""])
                for name in names:
                    assert name.split(".")[0] not in {"supervisor", "proto", "workers"}, (
                        f"{path.name}:{node.lineno} imports {name}")
