"""The process part of the spec: Kubernetes' command/args merge, env, cwd, stop signal."""

from __future__ import annotations

from typing import Any

import pytest

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import InvalidArgument
from podvisor.workers.runtime.spec_process import (
    DEFAULT_PATH,
    process_args,
    process_cwd,
    process_env,
    stop_signal,
)

IMAGE = {"Entrypoint": ["/entry"], "Cmd": ["--default"]}


def env(key: str, value: str) -> api.KeyValue:
    # KeyValue.value is bytes in cri-api.
    return api.KeyValue(key=key, value=value.encode())


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
    config = api.ContainerConfig(command=command, args=args)
    assert process_args(config, image) == expected


def test_nothing_to_run_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        process_args(api.ContainerConfig(), {})
    with pytest.raises(InvalidArgument, match="no command"):
        process_args(api.ContainerConfig(command=[""]), {})


def test_env_precedence_cri_over_image_over_defaults() -> None:
    config = api.ContainerConfig(envs=[env("FOO", "cri"), env("NEW", "x=y")])
    image = {"Env": ["FOO=image", "PATH=/image/bin", "ONLY_IMAGE=1", "NOVALUE"]}
    assert process_env(config, image, "pod-1") == [
        "PATH=/image/bin", "HOSTNAME=pod-1", "FOO=cri", "ONLY_IMAGE=1", "NEW=x=y"]


def test_env_defaults_path_and_hostname_and_term_only_with_tty() -> None:
    assert process_env(api.ContainerConfig(), {}, "h") == [f"PATH={DEFAULT_PATH}", "HOSTNAME=h"]
    assert process_env(api.ContainerConfig(tty=True), {}, None) == [
        f"PATH={DEFAULT_PATH}", "TERM=xterm"]


def test_env_can_override_hostname_and_skips_empty_keys() -> None:
    config = api.ContainerConfig(envs=[env("HOSTNAME", "mine"), api.KeyValue(value=b"v")])
    assert process_env(config, {}, "h") == [f"PATH={DEFAULT_PATH}", "HOSTNAME=mine"]


def test_env_value_absent_means_empty_and_bad_bytes_become_replacement_chars() -> None:
    config = api.ContainerConfig(envs=[api.KeyValue(key="EMPTY"),
                                       api.KeyValue(key="RAW", value=b"a\xffb")])
    assert process_env(config, {}, None)[1:] == ["EMPTY=", "RAW=a\ufffdb"]


@pytest.mark.parametrize("key", ["A=B", "A\0"])
def test_env_bad_names_are_invalid(key: str) -> None:
    with pytest.raises(InvalidArgument, match="environment variable name"):
        process_env(api.ContainerConfig(envs=[env(key, "v")]), {}, None)


@pytest.mark.parametrize(("config", "image", "expected"), [
    (api.ContainerConfig(), {}, "/"),
    (api.ContainerConfig(), {"WorkingDir": "/app"}, "/app"),
    (api.ContainerConfig(), {"WorkingDir": "app"}, "/app"),
    (api.ContainerConfig(working_dir="/cri"), {"WorkingDir": "/app"}, "/cri"),
])
def test_cwd(config: api.ContainerConfig, image: dict[str, Any], expected: str) -> None:
    assert process_cwd(config, image) == expected


def test_relative_working_dir_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        process_cwd(api.ContainerConfig(working_dir="rel"), {})


@pytest.mark.parametrize(("signal", "image", "expected"), [
    (api.SIGNAL_RUNTIME_DEFAULT, {}, "SIGTERM"),
    (api.SIGNAL_RUNTIME_DEFAULT, {"StopSignal": "SIGQUIT"}, "SIGQUIT"),
    (api.SIGNAL_SIGUSR1, {"StopSignal": "SIGQUIT"}, "SIGUSR1"),
    (api.SIGNAL_SIGRTMINPLUS3, {}, "SIGRTMIN+3"),
    (api.SIGNAL_SIGRTMAXMINUS2, {}, "SIGRTMAX-2"),
])
def test_stop_signal(signal: api.Signal, image: dict[str, Any], expected: str) -> None:
    assert stop_signal(api.ContainerConfig(stop_signal=signal), image) == expected


def test_unknown_stop_signal_is_invalid() -> None:
    # proto3 enums are open: a number no cri-api we know defines parses.
    config = api.ContainerConfig()
    config.stop_signal = 999  # type: ignore[assignment]
    with pytest.raises(InvalidArgument, match="stop_signal: unknown value 999"):
        stop_signal(config, {})
