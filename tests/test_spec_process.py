"""The process part of the spec: Kubernetes' command/args merge, env, cwd, stop signal."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from podvisor.proto.errors import InvalidArgument
from podvisor.workers.runtime import spec_cri
from podvisor.workers.runtime.spec_process import (
    DEFAULT_PATH,
    process_args,
    process_cwd,
    process_env,
    stop_signal,
)

IMAGE = {"Entrypoint": ["/entry"], "Cmd": ["--default"]}


def env(key: str, value: str) -> dict[str, Any]:
    # KeyValue.value is bytes in cri-api, so MessageToDict gives base64.
    return {"key": key, "value": base64.b64encode(value.encode()).decode()}


@pytest.mark.parametrize(("command", "args", "image", "expected"), [
    ([], [], IMAGE, ["/entry", "--default"]),
    (["/cmd"], [], IMAGE, ["/cmd"]),                       # command drops the image's Cmd
    (["/cmd"], ["a"], IMAGE, ["/cmd", "a"]),
    ([], ["a", "b"], IMAGE, ["/entry", "a", "b"]),          # args replace only Cmd
    ([], [], {"Cmd": ["sh", "-c", "x"]}, ["sh", "-c", "x"]),
    ([], ["echo", "hi"], {}, ["echo", "hi"]),              # args alone, no entrypoint
    (["/cmd"], [], {}, ["/cmd"]),
])
def test_args_merge_follows_kubernetes(command: list[str], args: list[str],
                                       image: dict[str, Any], expected: list[str]) -> None:
    config: dict[str, Any] = {}
    if command:
        config["command"] = command
    if args:
        config["args"] = args
    assert process_args(config, image) == expected


def test_nothing_to_run_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        process_args({}, {})
    with pytest.raises(InvalidArgument, match="no command"):
        process_args({"command": [""]}, {})


def test_env_precedence_cri_over_image_over_defaults() -> None:
    config = {"envs": [env("FOO", "cri"), env("NEW", "x=y")]}
    image = {"Env": ["FOO=image", "PATH=/image/bin", "ONLY_IMAGE=1", "NOVALUE"]}
    assert process_env(config, image, "pod-1") == [
        "PATH=/image/bin", "HOSTNAME=pod-1", "FOO=cri", "ONLY_IMAGE=1", "NEW=x=y"]


def test_env_defaults_path_and_hostname_and_term_only_with_tty() -> None:
    assert process_env({}, {}, "h") == [f"PATH={DEFAULT_PATH}", "HOSTNAME=h"]
    assert process_env({"tty": True}, {}, None) == [f"PATH={DEFAULT_PATH}", "TERM=xterm"]


def test_env_can_override_hostname_and_skips_empty_keys() -> None:
    config = {"envs": [env("HOSTNAME", "mine"), {"value": base64.b64encode(b"v").decode()}]}
    assert process_env(config, {}, "h") == [f"PATH={DEFAULT_PATH}", "HOSTNAME=mine"]


def test_env_value_absent_means_empty_and_bad_bytes_become_replacement_chars() -> None:
    config = {"envs": [{"key": "EMPTY"},
                       {"key": "RAW", "value": base64.b64encode(b"a\xffb").decode()}]}
    assert process_env(config, {}, None)[1:] == ["EMPTY=", "RAW=a\ufffdb"]


@pytest.mark.parametrize("key", ["A=B", "A\0"])
def test_env_bad_names_are_invalid(key: str) -> None:
    with pytest.raises(InvalidArgument, match="environment variable name"):
        process_env({"envs": [env(key, "v")]}, {}, None)


def test_env_value_that_is_not_base64_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="base64"):
        process_env({"envs": [{"key": "A", "value": "not base64!"}]}, {}, None)


@pytest.mark.parametrize(("config", "image", "expected"), [
    ({}, {}, "/"),
    ({}, {"WorkingDir": "/app"}, "/app"),
    ({}, {"WorkingDir": "app"}, "/app"),
    ({"working_dir": "/cri"}, {"WorkingDir": "/app"}, "/cri"),
])
def test_cwd(config: dict[str, Any], image: dict[str, Any], expected: str) -> None:
    assert process_cwd(config, image) == expected


def test_relative_working_dir_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        process_cwd({"working_dir": "rel"}, {})


@pytest.mark.parametrize(("config", "image", "expected"), [
    ({}, {}, "SIGTERM"),
    ({}, {"StopSignal": "SIGQUIT"}, "SIGQUIT"),
    ({"stop_signal": "SIGNAL_RUNTIME_DEFAULT"}, {"StopSignal": "SIGQUIT"}, "SIGQUIT"),
    ({"stop_signal": "SIGNAL_SIGUSR1"}, {"StopSignal": "SIGQUIT"}, "SIGUSR1"),
    ({"stop_signal": "SIGNAL_SIGRTMINPLUS3"}, {}, "SIGRTMIN+3"),
    ({"stop_signal": "SIGNAL_SIGRTMAXMINUS2"}, {}, "SIGRTMAX-2"),
])
def test_stop_signal(config: dict[str, Any], image: dict[str, Any], expected: str) -> None:
    assert stop_signal(config, image) == expected


def test_cri_readers_follow_message_to_dict() -> None:
    assert spec_cri.integer("1000", "f") == 1000
    assert spec_cri.wrapped_int({"run_as_user": {}}, "run_as_user") == 0
    assert spec_cri.wrapped_int({}, "run_as_user") is None
    assert spec_cri.enum({}, "p", ("A", "B")) == "A"
    assert spec_cri.enum({"p": 1}, "p", ("A", "B")) == "B"
    with pytest.raises(InvalidArgument, match="unknown value"):
        spec_cri.enum({"p": "C"}, "p", ("A", "B"))
    with pytest.raises(InvalidArgument, match="integer"):
        spec_cri.integer("12a", "f")
