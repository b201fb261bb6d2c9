"""The CRI configs a record holds, as the generated protobuf messages.

BRIDGE (issue 10, typed ops): records still keep the configs in
``MessageToDict`` form, so these parse that back. Once the runtime ops
carry serialized protobuf, records keep the bytes and these only parse
them; no caller changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from ...proto import api_pb2 as api


def container_config(record: Mapping[str, Any]) -> api.ContainerConfig:
    """The ContainerConfig of a container record."""
    return json_format.ParseDict(record["config"], api.ContainerConfig(),
                                 ignore_unknown_fields=False)


def sandbox_config(record: Mapping[str, Any]) -> api.PodSandboxConfig:
    """The PodSandboxConfig of a sandbox record."""
    return json_format.ParseDict(record["config"], api.PodSandboxConfig(),
                                 ignore_unknown_fields=False)
