"""The ops of the stream pool, and the plans the runtime pool hands it.

A streaming RPC (Exec, Attach, PortForward) is validated by the runtime
pool, which answers a plan: everything needed to reach the container or
the pod later, without asking any pool again. The supervisor hands the
plan to the stream pool, which keeps it behind a single-use token and
answers the URL. The client then connects to the streaming server, which
runs the plan.
"""

from __future__ import annotations

from .contract import Empty, Op, Record

EXEC, ATTACH, PORT_FORWARD = "exec", "attach", "portforward"
KINDS = (EXEC, ATTACH, PORT_FORWARD)


class Streams(Record, frozen=True, kw_only=True):
    """The streams a client asked for (the CRI request's own fields)."""

    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    tty: bool = False


class ExecPlan(Record, frozen=True, kw_only=True):
    """``<runtime...> exec [flags] --process <file> <container_id>`` runs it."""

    container_id: str
    runtime: list[str]
    """The OCI runtime's argv up to its subcommand: the binary and its global
    flags (--root, --systemd-cgroup)."""
    process: str
    """The OCI process to run, as JSON: the container's own with the exec's
    command as its args and ``terminal`` as asked (the runtime pool's
    exec_process)."""


class AttachPlan(Record, frozen=True, kw_only=True):
    """conmon's sockets of the container (conmon/contract.py)."""

    container_id: str
    attach_socket: str
    control_socket: str
    stdin: bool
    """The container was created with stdin and the client asked for it."""


class PortForwardPlan(Record, frozen=True, kw_only=True):
    sandbox_id: str
    netns: str
    """The pod's network namespace file; "" for a pod on the host network."""


class Session(Record, frozen=True, kw_only=True):
    """One URL's worth of work: exactly one of the plans is set."""

    kind: str
    """One of KINDS."""
    streams: Streams = Streams()
    exec: ExecPlan | None = None
    attach: AttachPlan | None = None
    forward: PortForwardPlan | None = None
    ports: list[int] = []
    """PortForward's ports, for the WebSocket protocol that takes them from
    the request (the URL's ``?port=`` wins)."""


class Issued(Record, frozen=True, kw_only=True):
    url: str


class StreamStats(Record, frozen=True, kw_only=True):
    """What the streaming server holds now, for status and metrics."""

    url: str
    """The server's base URL."""
    tokens: int
    """URLs issued and not yet used or expired."""
    active: dict[str, int]
    """Live sessions, by kind."""
    served: dict[str, int]
    """Sessions started since the worker started, by kind."""
    refused: dict[str, int]
    """Requests refused since the worker started, by reason."""


ISSUE = Op("stream.issue", Session, Issued)
STATS = Op("stream.stats", Empty, StreamStats, read_only=True)

OPS = (ISSUE, STATS)
