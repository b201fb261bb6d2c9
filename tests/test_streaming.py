"""Exec, Attach and PortForward through the CRI socket and the streaming
server, with real clients: crictl (SPDY, and WebSocket with ``-r``; a pty
of our own for ``-t``) and streamclient.py's SPDY v4, WebSocket v4 and v5.

One node and one pod for the module: a plain shell container to exec
into, one with stdin that echoes what it reads (attach), and a busybox
httpd on port 8080 (port-forward). The daemon's URLs live 1 s
(``token_ttl``), so expiry is seen without waiting a minute.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import termios
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest
from daemonlib import interrupt, poll_until
from podfixtures import IDLE, Node, node
from streamclient import (
    RESIZE,
    SPDY_PROTOCOLS,
    TRANSPORTS,
    V4,
    V5,
    Command,
    Inbox,
    PortForward,
    Result,
    SpdyCommand,
    SpdyConnection,
    UpgradeRefused,
    WsClient,
    WsCommand,
    finish,
    http_body,
    open_command,
    run_command,
    succeeded,
)

from podvisor.proto import api_pb2 as api

pytestmark = pytest.mark.timeout(180)

TOKEN_TTL = 1.0
CRICTL = shutil.which("crictl")
# Stops at once on the SIGTERM of StopPodSandbox: the trap runs when wait returns.
ECHO = ("trap 'exit 0' TERM; echo started; "
        'while read -r line; do echo "got $line"; echo "err $line" >&2; done')
WEB_PORT = 8080
PAGE = b"hello from httpd\n"
BIG = b"".join(b"%d\n" % i for i in range(1, 40001))
WEB = ("trap 'exit 0' TERM; mkdir -p /www && echo 'hello from httpd' > /www/index.html && "
       f"busybox seq 1 40000 > /www/big.txt && busybox httpd -f -p {WEB_PORT} -h /www & wait")
URL = re.compile(r"^http://127\.0\.0\.1:\d+/(exec|attach|portforward)/[A-Za-z0-9_-]+$")
# The echoed command line never matches: "$(" is not a digit.
SIZE_CMD = b'echo "SZ:$(busybox stty size):ZS"\n'
SIZE = rb"SZ:(\d+) (\d+):ZS"


@dataclass
class Pod:
    n: Node
    id: str
    config: api.PodSandboxConfig
    shell: str  # running, created without stdin
    echo: str  # stdin=True, stdin_once=False: answers "got <line>" and "err <line>"
    web: str  # busybox httpd on WEB_PORT

    def exec_url(self, cmd: list[str], *, container: str = "", stdin: bool = False,
                 tty: bool = False, stdout: bool = True, stderr: bool | None = None) -> str:
        url = str(self.n.daemon.runtime.Exec(api.ExecRequest(
            container_id=container or self.shell, cmd=cmd, stdin=stdin, stdout=stdout,
            stderr=not tty if stderr is None else stderr, tty=tty), timeout=30).url)
        assert URL.match(url) and "/exec/" in url, url
        return url

    def attach_url(self, container: str = "", *, stdin: bool = True, tty: bool = False) -> str:
        url = str(self.n.daemon.runtime.Attach(api.AttachRequest(
            container_id=container or self.echo, stdin=stdin, stdout=True, stderr=not tty,
            tty=tty), timeout=30).url)
        assert URL.match(url) and "/attach/" in url, url
        return url

    def forward_url(self) -> str:
        url = str(self.n.daemon.runtime.PortForward(
            api.PortForwardRequest(pod_sandbox_id=self.id), timeout=30).url)
        assert URL.match(url) and "/portforward/" in url, url
        return url

    def shell_session(self, transport: str, *, tty: bool = False) -> Command:
        """``sh`` in the shell container, stdin open."""
        return open_command(transport, self.exec_url(["sh"], stdin=True, tty=tty),
                            stdin=True, stderr=not tty, tty=tty)

    def run(self, transport: str, cmd: list[str], stdin: bytes | None = None) -> Result:
        return run_command(transport, self.exec_url(cmd, stdin=stdin is not None), stdin=stdin)


@pytest.fixture(scope="module")
def p() -> Iterator[Pod]:
    with node(config=f"[podvisor.stream]\ntoken_ttl = {TOKEN_TTL}\n") as n:
        config = n.pod_config("stream")
        pod_id = n.run_pod(config)
        shell = n.run(pod_id, config, n.container_config("shell", IDLE))
        echo = n.run(pod_id, config, n.container_config("echo", ECHO, stdin=True))
        web = n.run(pod_id, config, n.container_config("web", WEB))
        for cid in (shell, echo, web):
            n.wait_state(cid, api.CONTAINER_RUNNING)
        poll_until(lambda: n.exec(web, "busybox", "wget", "-q", "-O", "-",
                                  f"http://127.0.0.1:{WEB_PORT}/index.html").stdout == PAGE,
                   20, interval=0.2, what="httpd answering")
        yield Pod(n, pod_id, config, shell, echo, web)


# --- crictl ---------------------------------------------------------------------------


def crictl(p: Pod, *args: str) -> list[str]:
    assert CRICTL, "crictl is not on PATH: contrib/install.sh installs it"
    endpoint = f"unix://{p.n.daemon.socket}"
    return [CRICTL, "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
            "--timeout", "60s", *args]


def run_crictl(p: Pod, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(crictl(p, *args), input=stdin, capture_output=True, timeout=60,
                          check=False)


def pump(fd: int, inbox: Inbox) -> threading.Thread:
    """Copy what ``fd`` gives into ``inbox`` until EOF (or EIO: a pty's other side closed)."""
    def copy() -> None:
        try:
            while data := os.read(fd, 65536):
                inbox.put(data)
        except OSError:
            pass
        inbox.end()
    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


class Terminal:
    """A command on a pty of our own: what it prints, its window size."""

    def __init__(self, argv: list[str], rows: int, cols: int) -> None:
        self.master, slave = pty.openpty()
        self.set_size(rows, cols)
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.out = Inbox()
        self.reader = pump(self.master, self.out)

    def set_size(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def resize(self, rows: int, cols: int) -> None:
        # Not the controlling terminal of crictl's session: tell it ourselves.
        self.set_size(rows, cols)
        self.proc.send_signal(signal.SIGWINCH)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(5)
        os.close(self.master)


def seen_size(out: Inbox, type_: Callable[[bytes], None]) -> tuple[int, int]:
    """(rows, cols) as ``stty size`` in the session says now."""
    start = len(out.data)
    type_(SIZE_CMD)
    match = out.wait_for(SIZE, start, timeout=10)
    return int(match[1]), int(match[2])


def wait_size(out: Inbox, type_: Callable[[bytes], None], rows: int, cols: int) -> None:
    # A resize and the next command travel on different streams: ask again until it shows.
    poll_until(lambda: seen_size(out, type_) == (rows, cols), 20, interval=0.1,
               what=f"stty size {rows} {cols}")


def compute(out: Inbox, type_: Callable[[bytes], None]) -> None:
    start = len(out.data)
    type_(b"echo $((6*7))x\n")
    out.wait_for(rb"\b42x", start)


# --- exec ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_echo(p: Pod, transport: str) -> None:
    result = p.run(transport, ["echo", "-n", "hello"])
    assert result.stdout == b"hello" and result.stderr == b""
    assert succeeded(result), result


@pytest.mark.parametrize("tty", [False, True])
def test_exec_runs_as_the_container_user_in_its_cwd(p: Pod, tty: bool) -> None:
    # The container's process, whatever the runtime: crun (the default
    # handler) would run a bare `exec` as root in /.
    security = api.LinuxContainerSecurityContext(run_as_user=api.Int64Value(value=1001))
    user = p.n.run(p.id, p.config, p.n.container_config(
        f"user-{int(tty)}", IDLE, working_dir="/tmp",
        linux=api.LinuxContainerConfig(security_context=security)))
    try:
        p.n.wait_state(user, api.CONTAINER_RUNNING)
        url = p.exec_url(["sh", "-c", "id -u; pwd"], container=user, tty=tty)
        result = run_command("spdy-v4", url, stderr=not tty, tty=tty)
        assert result.stdout.decode().split() == ["1001", "/tmp"], result
        assert succeeded(result), result
    finally:
        p.n.daemon.runtime.RemoveContainer(
            api.RemoveContainerRequest(container_id=user), timeout=60)


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_crictl_exec_echo(p: Pod, transport: str) -> None:
    done = run_crictl(p, "exec", "-r", transport, p.shell, "echo", "-n", "hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hello"


@pytest.mark.parametrize("transport", ["spdy-v4", "ws-v5"])
def test_exec_stdin_until_eof(p: Pod, transport: str) -> None:
    data = b"".join(b"line %d\n" % i for i in range(2000))
    result = p.run(transport, ["cat"], stdin=data)
    assert result.stdout == data
    assert succeeded(result), result.status


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_exit_code_on_the_error_stream(p: Pod, transport: str) -> None:
    result = p.run(transport, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
    assert result.clean
    status = result.status
    assert status is not None
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode", status
    assert {"reason": "ExitCode", "message": "3"} in status["details"]["causes"], status


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_crictl_exec_exit_code(p: Pod, transport: str) -> None:
    done = run_crictl(p, "exec", "-r", transport, p.shell, "sh", "-c", "exit 3")
    assert done.returncode != 0
    assert b"exit code 3" in done.stderr, done.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_tty_shell_resizes(p: Pod, transport: str) -> None:
    cmd = p.shell_session(transport, tty=True)
    try:
        cmd.resize(90, 30)
        wait_size(cmd.stdout, cmd.write, 30, 90)
        compute(cmd.stdout, cmd.write)
        cmd.resize(100, 40)
        wait_size(cmd.stdout, cmd.write, 40, 100)
        cmd.write(b"exit 0\n")
    except BaseException:
        cmd.close()
        raise
    result = finish(cmd)
    assert succeeded(result), result.status


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_crictl_exec_tty_resizes(p: Pod, transport: str) -> None:
    term = Terminal(crictl(p, "exec", "-it", "-r", transport, p.shell, "sh"), 30, 90)
    try:
        wait_size(term.out, term.type, 30, 90)  # crictl sends the first size itself
        compute(term.out, term.type)
        term.resize(40, 100)
        wait_size(term.out, term.type, 40, 100)
        term.type(b"exit 0\n")
        assert term.proc.wait(30) == 0, term.out.data[-500:]
    finally:
        term.close()


# --- attach ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_reads_and_prints(p: Pod, transport: str) -> None:
    cmd = open_command(transport, p.attach_url(), stdin=True)
    try:
        cmd.write(f"hi-{transport}\n".encode())
        cmd.stdout.wait_for(f"got hi-{transport}\n".encode())
        cmd.stderr.wait_for(f"err hi-{transport}\n".encode())
    finally:
        cmd.close()
    # Detaching leaves the container running, stdin open for the next client.
    assert p.n.status(p.echo).state == api.CONTAINER_RUNNING


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_crictl_attach_stdin_once(p: Pod, transport: str) -> None:
    # critest's attach spec: stdin EOF ends the shell, the session ends in success.
    once = p.n.run(p.id, p.config, p.n.container_config(
        f"once-{transport}", "exec sh", stdin=True, stdin_once=True))
    p.n.wait_state(once, api.CONTAINER_RUNNING)
    done = run_crictl(p, "attach", "-i", "-r", transport, once, stdin=b"echo -n hello\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hello"
    p.n.wait_state(once, api.CONTAINER_EXITED)


# --- port forward ----------------------------------------------------------------------


PATHS = ["/big.txt", "/index.html"] * 4
WANT = {"/big.txt": BIG, "/index.html": PAGE}


def test_port_forward_parallel_connections(p: Pod) -> None:
    fwd = PortForward(p.forward_url())
    try:
        with ThreadPoolExecutor(len(PATHS)) as pool:
            answers = list(pool.map(lambda path: fwd.http_get(WEB_PORT, path), PATHS))
        for path, (response, error) in zip(PATHS, answers, strict=True):
            assert http_body(response) == WANT[path], path
            assert error == b""
        # Nothing listens on 8081: its error stream says so, the session lives on.
        response, error = fwd.http_get(WEB_PORT + 1, "/")
        assert response == b"" and error, (response, error)
        assert http_body(fwd.http_get(WEB_PORT, "/index.html")[0]) == PAGE
    finally:
        fwd.close()


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_crictl_port_forward(p: Pod, transport: str) -> None:
    proc = subprocess.Popen(crictl(p, "port-forward", "-r", transport, p.id, f"0:{WEB_PORT}"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    out = Inbox()
    assert proc.stdout is not None
    pump(proc.stdout.fileno(), out)
    try:
        port = int(out.wait_for(rb"Forwarding from 127\.0\.0\.1:(\d+)")[1])

        def get(path: str) -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
                body: bytes = resp.read()
                return body
        with ThreadPoolExecutor(len(PATHS)) as pool:
            bodies = list(pool.map(get, PATHS))
        assert bodies == [WANT[path] for path in PATHS]
        assert proc.poll() is None, out.data
    finally:
        interrupt(proc)


# --- tokens -----------------------------------------------------------------------------


def test_token_is_single_use(p: Pod) -> None:
    url = p.exec_url(["echo", "-n", "once"])
    assert run_command("spdy-v4", url).stdout == b"once"
    with pytest.raises(UpgradeRefused) as spdy_again:
        SpdyConnection(url, (V4,))
    assert spdy_again.value.status == 404
    with pytest.raises(UpgradeRefused) as ws_again:
        WsClient(url, (V5,))
    assert ws_again.value.status == 404
    unknown = url.rsplit("/", 1)[0] + "/AAAAAAAAAAAAAAAAAAAAAA"
    with pytest.raises(UpgradeRefused) as never:
        SpdyConnection(unknown, (V4,))
    assert never.value.status == 404


def test_token_expires(p: Pod) -> None:
    issued = time.monotonic()
    urls = [p.exec_url(["echo", "late"]), p.attach_url(), p.forward_url()]
    time.sleep(max(0.0, issued + TOKEN_TTL + 0.3 - time.monotonic()))
    for url, protocols in zip(urls, [(V4,), (V4,), ("portforward.k8s.io",)], strict=True):
        with pytest.raises(UpgradeRefused) as late:
            SpdyConnection(url, protocols)
        assert late.value.status == 404, url


# --- bad input ---------------------------------------------------------------------------


def rpc_error(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    code: grpc.StatusCode = err.value.code()
    return code


def test_bad_requests_are_refused(p: Pod) -> None:
    rt = p.n.daemon.runtime

    def exec_(**kw: object) -> Callable[[], object]:
        fields = {"container_id": p.shell, "cmd": ["true"], "stdout": True, **kw}
        return lambda: rt.Exec(api.ExecRequest(**fields), timeout=30)

    def attach(**kw: object) -> Callable[[], object]:
        fields = {"container_id": p.echo, "stdout": True, **kw}
        return lambda: rt.Attach(api.AttachRequest(**fields), timeout=30)

    invalid, missing = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    assert rpc_error(exec_(stdout=False)) == invalid  # no streams at all
    assert rpc_error(exec_(tty=True, stderr=True)) == invalid
    assert rpc_error(exec_(container_id="0" * 64)) == missing
    assert rpc_error(attach(stdout=False)) == invalid
    assert rpc_error(attach(tty=True, stderr=True)) == invalid
    assert rpc_error(attach(container_id=p.shell, stdin=True)) == invalid  # created without stdin
    assert rpc_error(attach(container_id="0" * 64)) == missing
    assert rpc_error(lambda: rt.PortForward(
        api.PortForwardRequest(pod_sandbox_id="0" * 64), timeout=30)) == missing
    assert rpc_error(lambda: rt.PortForward(
        api.PortForwardRequest(pod_sandbox_id=p.id, port=[70000]), timeout=30)) == invalid


def test_stopped_container_is_refused(p: Pod) -> None:
    done = p.n.run(p.id, p.config, p.n.container_config("done", "true"))
    p.n.wait_state(done, api.CONTAINER_EXITED)
    rt = p.n.daemon.runtime
    stopped = grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_error(lambda: rt.Exec(api.ExecRequest(
        container_id=done, cmd=["true"], stdout=True), timeout=30)) == stopped
    assert rpc_error(lambda: rt.Attach(api.AttachRequest(
        container_id=done, stdout=True), timeout=30)) == stopped


def test_unknown_subprotocols_are_refused(p: Pod) -> None:
    with pytest.raises(UpgradeRefused) as ws:
        WsClient(p.exec_url(["echo", "-n", "no"]), ("bogus",))
    assert 400 <= ws.value.status < 500
    with pytest.raises(UpgradeRefused) as spdy_:
        SpdyConnection(p.exec_url(["echo", "-n", "no"]), ("bogus",))
    assert 400 <= spdy_.value.status < 500
    with pytest.raises(UpgradeRefused) as none:
        SpdyConnection(p.exec_url(["echo", "-n", "no"]), ())
    assert 400 <= none.value.status < 500
    for transport in TRANSPORTS:
        result = p.run(transport, ["echo", "-n", "yes"])
        assert result.stdout == b"yes" and succeeded(result), transport


def test_bad_resize_harms_no_other_session(p: Pod) -> None:
    victim = p.shell_session("ws-v5", tty=True)
    bystander = p.shell_session("spdy-v4", tty=True)
    try:
        compute(victim.stdout, victim.write)
        compute(bystander.stdout, bystander.write)
        assert isinstance(victim, WsCommand)
        victim.send_resize(b"{not json\n")
        victim.send_resize(b'{"Width":-1,"Height":"x"}\n')
        victim.send_resize(b'{"Width":70000,"Height":70000}\n')
        # Last: a message past the limit ends the victim's session (1009),
        # and a send racing that close would fail in the client.
        victim.ws.send(RESIZE, b"{" + b" " * (4 << 20))
        # The other session types, reads and resizes as before.
        assert isinstance(bystander, SpdyCommand)
        compute(bystander.stdout, bystander.write)
        bystander.resize(77, 33)
        wait_size(bystander.stdout, bystander.write, 33, 77)
    finally:
        victim.close()
        bystander.close()
    for transport in TRANSPORTS:
        result = p.run(transport, ["echo", "-n", "fine"])
        assert result.stdout == b"fine" and succeeded(result), transport


def test_old_spdy_protocols_are_negotiated(p: Pod) -> None:
    # client-go offers v5 first; SPDY ends up on v4 (or v5, which is v4 on SPDY).
    conn = SpdyConnection(p.exec_url(["true"]), SPDY_PROTOCOLS)
    try:
        assert conn.protocol in (V5, V4), conn.protocol
    finally:
        conn.close()


# --- the stream worker -------------------------------------------------------------------


def stream_worker(p: Pod) -> dict[str, object]:
    workers = [w for w in p.n.daemon.status()["workers"] if w["pool"] == "stream"]
    assert len(workers) == 1, workers
    worker: dict[str, object] = workers[0]
    return worker


def test_status_counts_sessions(p: Pod) -> None:
    daemon = p.n.daemon
    # The worker starts with the module's first stream call (on demand);
    # this one, should the test run alone.
    assert succeeded(p.run("spdy-v4", ["true"]))

    def active() -> dict[str, int]:
        counts: dict[str, int] = daemon.status()["streaming"]["active"]
        return counts
    def idle() -> bool:
        counts = active()
        assert counts == {"exec": 0, "attach": 0, "portforward": 0}, counts
        return True
    poll_until(idle, 15, what="no session left from earlier tests")
    assert stream_worker(p)["state"] == "READY"
    cmd = p.shell_session("spdy-v4", tty=True)
    attached = open_command("ws-v5", p.attach_url(), stdin=True)
    fwd = PortForward(p.forward_url())
    try:
        compute(cmd.stdout, cmd.write)
        poll_until(lambda: active() == {"exec": 1, "attach": 1, "portforward": 1}, 15,
                   what="one session of each kind")
        doc = json.loads(daemon.cli("status", "--json").stdout)
        assert doc["streaming"]["active"]["exec"] == 1
        assert doc["streaming"]["url"].startswith("http://127.0.0.1:")
        table = daemon.cli("status").stdout
        assert re.search(r"^stream\s+1\s+\d+\s+READY", table, re.M), table
        assert re.search(r'^podvisor_stream_sessions\{kind="exec"\} 1(\.0)?$',
                         daemon.metrics(), re.M)
    finally:
        cmd.close()
        attached.close()
        fwd.close()
    poll_until(idle, 15, what="sessions counted out when their clients go")


def test_kill_stream_worker_mid_session(p: Pod) -> None:
    sessions = [p.shell_session("spdy-v4", tty=True), p.shell_session("ws-v5", tty=True)]
    for cmd in sessions:
        compute(cmd.stdout, cmd.write)
    victim = stream_worker(p)["pid"]
    assert isinstance(victim, int)
    os.kill(victim, signal.SIGKILL)
    for cmd in sessions:
        result = finish(cmd, timeout=20)
        assert not result.clean and result.status is None, result

    def exec_works() -> bool:
        result = p.run("spdy-v4", ["echo", "-n", "back"])
        return result.stdout == b"back" and succeeded(result)
    poll_until(exec_works, 30, interval=0.2, what="exec through the restarted stream worker")
    worker = stream_worker(p)
    assert worker["pid"] != victim and worker["state"] == "READY"
    for cid in (p.shell, p.echo, p.web):
        assert p.n.status(cid).state == api.CONTAINER_RUNNING


def test_removed_container_ends_its_exec_with_an_error(p: Pod) -> None:
    doomed = p.n.run(p.id, p.config, p.n.container_config("doomed", IDLE))
    p.n.wait_state(doomed, api.CONTAINER_RUNNING)
    cmd = open_command("ws-v5", p.exec_url(["sh"], container=doomed, stdin=True),
                       stdin=True, stderr=True)
    compute(cmd.stdout, cmd.write)
    p.n.daemon.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=doomed),
                                       timeout=60)
    result = finish(cmd, timeout=30)
    # The shell was killed with its container: SIGKILL, 128+9.
    assert result.clean and result.status is not None, result
    assert result.status["reason"] == "NonZeroExitCode", result.status
    assert result.status["details"]["causes"] == [{"reason": "ExitCode", "message": "137"}]


def test_websocket_channel_port_forward(p: Pod) -> None:
    """The kubelet's own WebSocket port-forward: ports from the query, port i
    on channels 2i (data) and 2i+1 (errors), each opened by its port number."""
    ws = WsClient(f"{p.forward_url()}?port={WEB_PORT}&port={WEB_PORT + 1}",
                  subprotocols=("v4.channel.k8s.io",))
    try:
        prefix = WEB_PORT.to_bytes(2, "little")
        for channel in (0, 1):
            ws.channels[channel].wait_for(re.escape(prefix))
        # Nothing listens on the second port: its error channel says so.
        ws.channels[3].wait_for(rb"error forwarding port %d" % (WEB_PORT + 1))
        ws.send(0, b"GET /index.html HTTP/1.0\r\n\r\n")
        ws.channels[0].wait_for(re.escape(PAGE))
        assert ws.channels[0].data.startswith(prefix + b"HTTP/1.")
    finally:
        ws.close()
