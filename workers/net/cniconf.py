"""Finding the network to use in ``network_dir``.

As libcni and CRI-O's ocicni do: files ending .conflist, .conf or .json, in
lexical order; the first *valid* one wins. A .conf/.json file holds a single
plugin config and is a list of one. Valid means (ocicni's
``ValidateNetworkList``): it parses, names a network, has a cniVersion
podvisor speaks, and every plugin it names is an executable in
``plugin_dirs`` that supports that version. An invalid file is skipped with
its reason kept, so Status can say which file is broken and why, naming the
plugin when a plugin is the problem.

The directory is re-read on every call (it is small; plugin VERSION answers
are memoised in cni.py), so dropping a conflist in makes the network ready
without a restart, and removing it makes it not ready.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import cni

EXTENSIONS = (".conflist", ".conf", ".json")


@dataclass(frozen=True)
class Found:
    config: cni.NetworkList | None
    problem: str
    # Files that were skipped, with why, so an operator sees the typo.
    invalid: dict[str, str]


class ConfigInvalid(ValueError):
    """A network config file that cannot be used; the message names the file."""


def parse(path: str) -> cni.NetworkList:
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
    version = data.get("cniVersion")
    if version not in cni.SUPPORTED_VERSIONS:
        raise ConfigInvalid(f"{path}: cniVersion {version!r} is not supported "
                            f"(podvisor speaks {', '.join(cni.SUPPORTED_VERSIONS)})")
    return cni.NetworkList(path=path, name=name, cni_version=version,
                           plugins=tuple(_plugin_entry(p) for p in plugins), raw=data)


def _plugin_entry(plugin: dict[str, Any]) -> dict[str, Any]:
    # A .conf carries the list-level keys in the plugin itself; the
    # executor injects name and cniVersion, so they need not be duplicated.
    return {k: v for k, v in plugin.items() if k not in ("plugins", "disableCheck")}


def validate(net: cni.NetworkList, plugin_dirs: Sequence[str]) -> None:
    """Raise ConfigInvalid, naming file and plugin, if a plugin can't run it."""
    for plugin in net.plugins:
        kind = plugin["type"]
        binary = cni.find_plugin(kind, plugin_dirs)
        if binary is None:
            raise ConfigInvalid(f"{net.path}: plugin {kind!r} not found in "
                                f"{':'.join(plugin_dirs)}")
        try:
            versions = cni.plugin_versions(binary)
        except (cni.PluginError, OSError) as exc:
            raise ConfigInvalid(f"{net.path}: plugin {kind!r} ({binary}) did not answer "
                                f"VERSION: {exc}") from exc
        if net.cni_version not in versions:
            raise ConfigInvalid(f"{net.path}: plugin {kind!r} ({binary}) does not support "
                                f"cniVersion {net.cni_version} (it supports "
                                f"{', '.join(versions)})")


def find_default(network_dir: str, plugin_dirs: Sequence[str]) -> Found:
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
            net = parse(path)
            validate(net, plugin_dirs)
        except ConfigInvalid as exc:
            invalid[path] = str(exc)
            continue
        return Found(net, "", invalid)
    if invalid:
        reasons = "; ".join(invalid.values())
        return Found(None, f"no valid CNI network config in {network_dir}: {reasons}", invalid)
    return Found(None, f"no CNI network config found in {network_dir}", {})


def from_record(raw: dict[str, Any], path: str) -> cni.NetworkList:
    """Rebuild the network a pod was set up with from its record.

    The record holds the file's parsed content, so DEL uses the very config
    ADD used even if the file was edited or removed since (CNI spec: DEL
    must get the same config as ADD).
    """
    plugins = raw.get("plugins") if "plugins" in raw else [raw]
    if not isinstance(plugins, list):
        raise ConfigInvalid(f"{path}: cached config has no plugins list")
    return cni.NetworkList(
        path=path, name=str(raw.get("name", "")), cni_version=str(raw.get("cniVersion", "")),
        plugins=tuple(_plugin_entry(p) for p in plugins if isinstance(p, dict)), raw=raw)
