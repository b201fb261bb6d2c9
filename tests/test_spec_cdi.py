"""CDI spec files resolved and applied to an OCI spec, as pure functions
(the container's view is tested in test_cdi.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import InvalidArgument, NotFound
from podvisor.workers.runtime import spec_cdi


def write(directory: Path, name: str, kind: str, devices: list[dict[str, Any]],
          shared: dict[str, Any] | None = None) -> None:
    directory.mkdir(exist_ok=True)
    spec: dict[str, Any] = {"cdiVersion": "0.6.0", "kind": kind, "devices": devices}
    if shared:
        spec["containerEdits"] = shared
    (directory / name).write_text(json.dumps(spec))


def test_a_later_directory_wins_and_shared_edits_come_once(tmp_path: Path) -> None:
    write(tmp_path / "etc", "v.json", "v.io/gpu",
          [{"name": "0", "containerEdits": {"env": ["WHO=etc"]}}])
    write(tmp_path / "run", "v.json", "v.io/gpu",
          [{"name": "0", "containerEdits": {"env": ["WHO=run"]}},
           {"name": "1", "containerEdits": {"env": ["ONE=1"]}}], shared={"env": ["SHARED=1"]})
    edits = spec_cdi.resolve(["v.io/gpu=0", "v.io/gpu=1"],
                             [str(tmp_path / "etc"), str(tmp_path / "run")])
    spec: dict[str, Any] = {"process": {"env": ["WHO=image", "PATH=/bin"]}}
    spec_cdi.apply(spec, edits)
    assert spec["process"]["env"] == ["PATH=/bin", "SHARED=1", "WHO=run", "ONE=1"]


def test_nodes_rules_mounts_and_hooks(tmp_path: Path) -> None:
    write(tmp_path, "v.yaml", "v.io/dev", [{"name": "n", "containerEdits": {
        "deviceNodes": [{"path": "/dev/mine", "hostPath": "/dev/null", "permissions": "rw"},
                        {"path": "/dev/given", "type": "b", "major": 8, "minor": 1,
                         "fileMode": 0o600}],
        "mounts": [{"hostPath": "/usr/lib", "containerPath": "/opt/lib//"}],
        "hooks": [{"hookName": "createContainer", "path": "/bin/true", "args": ["true"]}]}}])
    spec: dict[str, Any] = {"mounts": [{"destination": "/opt/lib", "source": "/x"}]}
    spec_cdi.apply(spec, spec_cdi.resolve(["v.io/dev=n"], [str(tmp_path)]))
    assert spec["linux"]["devices"] == [
        {"path": "/dev/mine", "type": "c", "major": 1, "minor": 3},
        {"path": "/dev/given", "type": "b", "major": 8, "minor": 1, "fileMode": 0o600}]
    assert spec["linux"]["resources"]["devices"] == [
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
        {"allow": True, "type": "b", "major": 8, "minor": 1, "access": "rwm"}]
    assert spec["mounts"] == [{"destination": "/opt/lib", "type": "bind", "source": "/usr/lib",
                               "options": ["bind"]}]
    assert spec["hooks"] == {"createContainer": [{"path": "/bin/true", "args": ["true"]}]}


def test_requested_names_from_the_field_and_annotations() -> None:
    config = api.ContainerConfig(CDI_devices=[api.CDIDevice(name="a.io/x=1")],
                                 annotations={"cdi.k8s.io/p": "a.io/x=2, a.io/x=1",
                                              "other": "b.io/y=1"})
    assert spec_cdi.requested(config) == ["a.io/x=1", "a.io/x=2"]
    with pytest.raises(InvalidArgument):
        spec_cdi.requested(api.ContainerConfig(CDI_devices=[api.CDIDevice(name="x=1")]))


@pytest.mark.parametrize("edits", [
    {"env": ["NOEQUALS"]}, {"deviceNodes": [{"path": "relative"}]},
    {"deviceNodes": [{"path": "/dev/x", "hostPath": "/etc/passwd"}]},
    {"deviceNodes": [{"path": "/dev/x", "type": "c", "major": 1, "minor": 3,
                      "permissions": "rx"}]},
    {"mounts": [{"hostPath": "/a", "containerPath": "b"}]},
    {"hooks": [{"hookName": "whenever", "path": "/bin/true"}]},
])
def test_bad_edits_are_invalid(tmp_path: Path, edits: dict[str, Any]) -> None:
    write(tmp_path, "v.json", "v.io/x", [{"name": "d", "containerEdits": edits}])
    with pytest.raises(InvalidArgument):
        spec_cdi.apply({}, spec_cdi.resolve(["v.io/x=d"], [str(tmp_path)]))


def test_missing_devices_and_nodes_are_not_found(tmp_path: Path) -> None:
    write(tmp_path, "v.json", "v.io/x", [{"name": "d", "containerEdits": {
        "deviceNodes": [{"path": "/dev/nothing-here"}]}}])
    with pytest.raises(NotFound):
        spec_cdi.resolve(["v.io/x=e"], [str(tmp_path), str(tmp_path / "absent")])
    with pytest.raises(NotFound):
        spec_cdi.apply({}, spec_cdi.resolve(["v.io/x=d"], [str(tmp_path)]))
    assert spec_cdi.resolve([], ["/nonexistent"]) == []
