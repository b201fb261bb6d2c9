"""What the container runs: arguments, environment, working directory, stop signal.

All pure functions of the CRI config and the image config.

Arguments merge as Kubernetes documents it (and CRI-O's
``SpecSetProcessArgs`` does): a CRI ``command`` replaces the image's
Entrypoint *and* drops its Cmd; CRI ``args`` alone replace only Cmd; with
neither, Entrypoint + Cmd. Nothing at all to run is INVALID_ARGUMENT.

Environment precedence, lowest first: the defaults (PATH, as the OCI
runtime-tools default spec CRI-O starts from; HOSTNAME, which CRI-O sets
to the pod's hostname), then the image's Env, then the CRI envs (CRI-O
``mergeEnvs``). A key keeps the position where it first appeared. TERM=xterm
is added only for a tty, as Docker and containerd do (CRI-O's spec template
carries it always; a log is no terminal, so podvisor does not).

The working directory is the CRI ``working_dir``, else the image's
WorkingDir, else "/" (CRI-O ``setupContainerEnvironmentAndWorkdir``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import InvalidArgument, shorten

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The OCI image-spec's annotation for a container's stop signal
# (image-spec conversion.md); CRI-O writes it into every container spec,
# and StopContainer reads it back.
STOP_SIGNAL_ANNOTATION = "org.opencontainers.image.stopSignal"


def _image_list(image_config: Mapping[str, Any], key: str) -> list[str]:
    value = image_config.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"image config {key}: expected a list of strings")
    return list(value)


def process_args(container_config: api.ContainerConfig,
                 image_config: Mapping[str, Any]) -> list[str]:
    command = list(container_config.command)
    args = list(container_config.args)
    if command:
        merged = command + args
    else:
        merged = _image_list(image_config, "Entrypoint") + (
            args or _image_list(image_config, "Cmd"))
    if not merged or not merged[0]:
        raise InvalidArgument("no command specified: the CRI config and the image config "
                              "give neither a command nor args")
    for index, arg in enumerate(merged):
        # execve(2) cannot pass one; the runtime would fail the create.
        if "\0" in arg:
            raise InvalidArgument(f"argument {index} of the command, {shorten(arg)}, contains "
                                  "a NUL byte")
    return merged


def _check_key(key: str, origin: str) -> None:
    if not key or "=" in key or "\0" in key:
        raise InvalidArgument(f"{origin}: invalid environment variable name {key!r}")


def process_env(container_config: api.ContainerConfig, image_config: Mapping[str, Any],
                hostname: str | None) -> list[str]:
    env: dict[str, str] = {"PATH": DEFAULT_PATH}
    if container_config.tty:
        env["TERM"] = "xterm"
    if hostname:
        env["HOSTNAME"] = hostname
    for item in _image_list(image_config, "Env"):
        key, sep, value = item.partition("=")
        # An entry without "=" carries no value; Docker drops it too.
        if sep and key:
            env[key] = value
    for kv in container_config.envs:
        key = kv.key
        if not key:
            continue  # CRI-O skips empty keys (mergeEnvs)
        _check_key(key, "envs")
        # KeyValue.value is bytes in cri-api. Invalid UTF-8 becomes U+FFFD,
        # which is what Go's encoding/json does to the same bytes when CRI-O
        # writes config.json: a JSON document can hold no other string.
        value = kv.value.decode("utf-8", errors="replace")
        if "\0" in value:
            raise InvalidArgument(f"envs: the value of {key} holds a NUL byte")
        env[key] = value
    return [f"{k}={v}" for k, v in env.items()]


def process_cwd(container_config: api.ContainerConfig, image_config: Mapping[str, Any]) -> str:
    cwd = container_config.working_dir
    if cwd:
        if not cwd.startswith("/"):
            raise InvalidArgument(f"working_dir {shorten(cwd)} is not an absolute path")
        if "\0" in cwd:
            raise InvalidArgument(f"working_dir {shorten(cwd)} contains a NUL byte")
        return cwd
    image_cwd = image_config.get("WorkingDir") or ""
    if not isinstance(image_cwd, str):
        raise InvalidArgument("image config WorkingDir: expected a string")
    if not image_cwd:
        return "/"
    # Image builders always write an absolute WorkingDir; a relative one is
    # taken from the root, as the runtime would otherwise refuse it.
    return image_cwd if image_cwd.startswith("/") else "/" + image_cwd


def _signal_name(enum_name: str) -> str:
    """``SIGNAL_SIGRTMINPLUS3`` → ``SIGRTMIN+3`` (the spelling image configs use)."""
    name = enum_name.removeprefix("SIGNAL_")
    for word, sign in (("SIGRTMINPLUS", "+"), ("SIGRTMAXMINUS", "-")):
        if name.startswith(word):
            return f"{word[:8]}{sign}{name[len(word):]}"
    return name


def stop_signal(container_config: api.ContainerConfig, image_config: Mapping[str, Any]) -> str:
    """The signal StopContainer sends first: the CRI's, else the image's, else SIGTERM.

    The CRI ``stop_signal`` (KEP-4960) overrides the image's StopSignal
    unless it is RUNTIME_DEFAULT, as CRI-O's ``setupContainerRuntimeAndStopSignal``.
    """
    value = container_config.stop_signal
    if value != api.SIGNAL_RUNTIME_DEFAULT:
        try:
            return _signal_name(api.Signal.Name(value))
        except ValueError:
            # proto3 enums are open: a number from a newer cri-api parses.
            raise InvalidArgument(f"stop_signal: unknown value {value}") from None
    image_signal = image_config.get("StopSignal") or ""
    return image_signal if isinstance(image_signal, str) and image_signal else "SIGTERM"
