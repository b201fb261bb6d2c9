"""podvisor-conmon exec (ExecSync), on real runc and crun.

Each test runs a busybox container under conmon and execs into it through
the command line, as the runtime worker will, timing the call: the deadline
must hold even when the command leaves a background child holding its
stdout, and whatever the call killed must be gone from the container.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from bundle import CONMON, Container, runtime_or_skip
from daemonlib import poll_until

pytestmark = pytest.mark.timeout(120)

# Slack over an exec's timeout: runtime start-up plus a loaded CI machine.
SLACK = 3.0


@pytest.fixture(params=["runc", "crun"])
def container(request: pytest.FixtureRequest) -> Iterator[Container]:
    runtime = runtime_or_skip(request.param)
    base = runtime.root.parent
    c = Container(runtime, base)
    try:
        c.make_bundle(["sleep", "1000"])
        c.spawn()
        c.start()
        yield c
    finally:
        try:
            c.cleanup()
        finally:
            shutil.rmtree(base)


def exec_sync(c: Container, *args: str, timeout: float = 10.0,
              extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], float]:
    """The decoded JSON result, and how long the call took."""
    argv = [CONMON, "exec", "--id", c.id, "--runtime", c.runtime.path,
            "--runtime-root", str(c.runtime.root), "--timeout", str(timeout), *extra,
            "--", *args]
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, check=False, timeout=60)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr.decode()
    result: dict[str, Any] = json.loads(out.stdout)
    for stream in ("stdout", "stderr"):
        result[stream] = base64.b64decode(result[stream])
    return result, elapsed


def container_pids(c: Container) -> list[int]:
    out = c.runtime.run("ps", "--format", "json", c.id)
    pids: list[int] = json.loads(out.stdout)
    return pids


def test_echo(container: Container) -> None:
    result, _ = exec_sync(container, "echo", "hi")
    assert result["exit_code"] == 0
    assert result["stdout"] == b"hi\n" and result["stderr"] == b""
    assert result["timed_out"] is False
    assert result["runtime_error"] is None


def test_failing_command_keeps_its_exit_code(container: Container) -> None:
    result, _ = exec_sync(container, "sh", "-c", "echo oops >&2; exit 5")
    assert result["exit_code"] == 5
    assert result["stderr"] == b"oops\n"
    assert result["runtime_error"] is None


def test_timeout_kills_the_command(container: Container) -> None:
    result, elapsed = exec_sync(container, "sleep", "10", timeout=1)
    assert result["timed_out"] is True
    assert result["exit_code"] == 137
    assert 1 <= elapsed < 1 + SLACK
    poll_until(lambda: container_pids(container) == [container.pid], 10,
               what="only the init left in the container")


def test_timeout_holds_with_a_background_child_on_stdout(container: Container) -> None:
    result, elapsed = exec_sync(container, "sh", "-c", "sleep 30 & echo started; sleep 10",
                                timeout=1)
    assert result["timed_out"] is True
    assert result["stdout"] == b"started\n"
    assert 1 <= elapsed < 1 + SLACK
    poll_until(lambda: container_pids(container) == [container.pid], 10,
               what="the command and its background child killed")


def test_returns_when_the_command_exits_despite_a_background_child(
        container: Container) -> None:
    result, elapsed = exec_sync(container, "sh", "-c", "sleep 30 & echo started", timeout=20)
    assert result["timed_out"] is False
    assert result["exit_code"] == 0
    assert result["stdout"] == b"started\n"
    assert elapsed < SLACK


def test_process_file_sets_env_and_cwd(container: Container) -> None:
    process = container.base / "process.json"
    process.write_text(json.dumps({
        "terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": "/tmp",
        "args": ["sh", "-c", "echo $GREETING; pwd"],
        "env": ["PATH=/bin", "GREETING=hello"]}))
    argv = [CONMON, "exec", "--id", container.id, "--runtime", container.runtime.path,
            "--runtime-root", str(container.runtime.root), "--timeout", "10",
            "--process", str(process)]
    out = subprocess.run(argv, capture_output=True, check=True, timeout=60)
    result = json.loads(out.stdout)
    assert result["exit_code"] == 0
    assert base64.b64decode(result["stdout"]) == b"hello\n/tmp\n"


def test_output_is_capped(container: Container) -> None:
    result, _ = exec_sync(container, "head", "-c", "5000", "/dev/zero",
                          extra=("--output-max", "1000"))
    assert result["exit_code"] == 0
    assert result["stdout"] == b"\0" * 1000
    assert result["stdout_truncated"] is True
    assert result["stderr_truncated"] is False


def test_runtime_errors_are_told_apart(container: Container) -> None:
    container.runtime.run("kill", container.id, "KILL")
    container.exit_record()
    result, _ = exec_sync(container, "echo", "hi")
    assert result["exit_code"] != 0
    assert result["runtime_error"]
