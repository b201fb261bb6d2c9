"""Finding the network config in ``network_dir``, as the CNI spec and
libcni do: files ending .conflist, .conf or .json, in lexical order, the
first valid one wins. A .conf/.json file holds a single plugin config and is
treated as a list of one.

The directory is re-read on every call (it is small), so a config dropped
in makes the network ready without a restart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

EXTENSIONS = (".conflist", ".conf", ".json")


@dataclass(frozen=True)
class NetworkConfig:
    path: str
    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Found:
    config: NetworkConfig | None
    problem: str
    # Files that were skipped, with why, so an operator sees the typo.
    invalid: dict[str, str]


class ConfigInvalid(ValueError):
    """A network config file that cannot be used; the message names the file."""


def parse(path: str) -> NetworkConfig:
    """Load one config file, normalising a single-plugin .conf to a list."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigInvalid(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigInvalid(f"{path}: not a JSON object")
    if path.endswith(".conflist"):
        plugins = data.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise ConfigInvalid(f"{path}: no plugins list")
    else:
        plugins = [data]
    for plugin in plugins:
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise ConfigInvalid(f"{path}: a plugin entry has no type")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigInvalid(f"{path}: no network name")
    return NetworkConfig(path=path, name=name, cni_version=str(data.get("cniVersion", "")),
                         plugins=plugins, raw=data)


def find_default(network_dir: str) -> Found:
    """Return the lexically first valid config in ``network_dir``."""
    try:
        names = sorted(n for n in os.listdir(network_dir) if n.endswith(EXTENSIONS))
    except FileNotFoundError:
        return Found(None, f"network config dir {network_dir} does not exist", {})
    except OSError as exc:
        return Found(None, f"cannot read network config dir {network_dir}: {exc}", {})
    invalid: dict[str, str] = {}
    for name in names:
        path = os.path.join(network_dir, name)
        try:
            return Found(parse(path), "", invalid)
        except ConfigInvalid as exc:
            invalid[path] = str(exc)
    if invalid:
        reasons = "; ".join(invalid.values())
        return Found(None, f"no valid CNI network config in {network_dir}: {reasons}", invalid)
    return Found(None, f"no CNI network config found in {network_dir}", {})
