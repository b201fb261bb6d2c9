"""The seccomp part of the spec builder, as pure functions: which profile
a container asks for, podvisor's RuntimeDefault, and profile files turned
into the OCI form. What the filters do is tested in a container
(test_seccomp.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import InvalidArgument, NotFound
from podvisor.workers.runtime import seccomp_default
from podvisor.workers.runtime.spec_seccomp import requested, seccomp, to_oci

NO_CAPS: frozenset[str] = frozenset()
ADMIN = frozenset({"CAP_SYS_ADMIN"})


def sc(**fields: Any) -> api.LinuxContainerSecurityContext:
    return api.LinuxContainerSecurityContext(**fields)


def allowed(profile: dict[str, Any]) -> set[str]:
    return {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"
            and "args" not in rule for name in rule["names"]}


@pytest.mark.parametrize(("context", "when_empty", "kind"), [
    (sc(), False, "Unconfined"),
    (sc(), True, "RuntimeDefault"),
    (sc(seccomp=api.SecurityProfile()), False, "RuntimeDefault"),
    (sc(seccomp=api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined)), True,
     "Unconfined"),
    (sc(seccomp_profile_path="runtime/default"), False, "RuntimeDefault"),
    (sc(seccomp_profile_path="docker/default"), False, "RuntimeDefault"),
    (sc(seccomp_profile_path="unconfined"), True, "Unconfined"),
])
def test_what_a_container_asks_for(context: api.LinuxContainerSecurityContext,
                                   when_empty: bool, kind: str) -> None:
    assert requested(context, when_empty) == (kind, "")


def test_localhost_names_an_absolute_path_in_either_field() -> None:
    profile = api.SecurityProfile(profile_type=api.SecurityProfile.Localhost,
                                  localhost_ref="/etc/p/../p/x.json")
    assert requested(sc(seccomp=profile), False) == ("Localhost", "/etc/p/x.json")
    assert requested(sc(seccomp_profile_path="localhost//etc/x.json"), False) == \
        ("Localhost", "/etc/x.json")
    for bad in (sc(seccomp=api.SecurityProfile(profile_type=api.SecurityProfile.Localhost)),
                sc(seccomp=api.SecurityProfile(profile_type=api.SecurityProfile.Localhost,
                                               localhost_ref="x.json")),
                sc(seccomp_profile_path="localhost/x.json"),
                sc(seccomp_profile_path="strict")):
        with pytest.raises(InvalidArgument):
            requested(bad, False)


def test_runtime_default_blocks_what_reaches_past_the_container() -> None:
    profile = seccomp_default.profile(NO_CAPS, "x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = allowed(profile)
    assert {"read", "openat", "execve", "socket", "futex", "chmod"} <= names
    for blocked in ("sethostname", "mount", "unshare", "setns", "keyctl", "bpf", "ptrace",
                    "kexec_load", "init_module", "reboot", "settimeofday", "userfaultfd",
                    "perf_event_open", "pivot_root", "clone"):
        assert blocked not in names, blocked
    [clone] = [r for r in profile["syscalls"] if r["names"] == ["clone"]]
    assert clone["args"] == [{"index": 0, "value": seccomp_default.CLONE_NAMESPACE_FLAGS,
                              "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    [clone3] = [r for r in profile["syscalls"] if r["names"] == ["clone3"]]
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": seccomp_default.ENOSYS}
    # s390 passes clone's flags second.
    [s390] = [r for r in seccomp_default.profile(NO_CAPS, "s390x")["syscalls"]
              if r["names"] == ["clone"]]
    assert s390["args"][0]["index"] == 1


def test_capabilities_open_what_they_already_grant() -> None:
    admin = seccomp_default.profile(ADMIN, "x86_64")
    assert {"sethostname", "mount", "unshare", "setns", "clone", "clone3"} <= allowed(admin)
    assert not [r for r in admin["syscalls"] if r["names"] in (["clone"], ["clone3"])]
    ptrace = allowed(seccomp_default.profile(frozenset({"CAP_SYS_PTRACE"}), "x86_64"))
    assert {"ptrace", "process_vm_readv"} <= ptrace and "mount" not in ptrace


def test_a_profile_file_becomes_the_oci_form_for_this_container() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                     "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"name": "chmod", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["SYS_ADMIN"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["amd64"]}},
            {"names": ["sync"], "action": "SCMP_ACT_ALLOW",
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
        ]}
    plain = to_oci(profile, NO_CAPS, "x86_64")
    assert plain["defaultAction"] == "SCMP_ACT_ERRNO" and plain["defaultErrnoRet"] == 1
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert [r["names"] for r in plain["syscalls"]] == [
        ["read", "write"], ["chmod"], ["arch_prctl"], ["sync"], ["personality"]]
    assert plain["syscalls"][1]["errnoRet"] == 13
    assert plain["syscalls"][4]["args"] == [{"index": 0, "value": 8, "valueTwo": 0,
                                            "op": "SCMP_CMP_EQ"}]
    admin = to_oci(profile, ADMIN, "aarch64")
    assert admin["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert [r["names"] for r in admin["syscalls"]] == [
        ["read", "write"], ["chmod"], ["mount"], ["personality"]]


@pytest.mark.parametrize("profile", [
    [], {"syscalls": []}, {"defaultAction": "SCMP_ACT_NOTIFY"},
    {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]},
    {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "ALLOW"}]},
    {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ERRNO",
                                                      "errnoRet": -1}]},
    {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "op": "SCMP_CMP_EQ"}]}]},
    {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "op": "LIKE"}]}]},
    {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]},
    {"defaultAction": "SCMP_ACT_ALLOW", "architectures": "SCMP_ARCH_X86_64"},
])
def test_what_is_not_a_profile_is_invalid(profile: Any) -> None:
    with pytest.raises(InvalidArgument):
        to_oci(profile, NO_CAPS, "x86_64")


def test_files_are_read_and_privileged_gets_none(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_LOG"}))
    local = sc(seccomp=api.SecurityProfile(profile_type=api.SecurityProfile.Localhost,
                                           localhost_ref=str(path)))
    assert seccomp(local, NO_CAPS, False, machine="x86_64") == {
        "defaultAction": "SCMP_ACT_LOG", "syscalls": []}
    assert seccomp(local, NO_CAPS, True) is None
    path.unlink()
    with pytest.raises(NotFound):
        seccomp(local, NO_CAPS, False)
    path.mkdir()
    with pytest.raises(InvalidArgument):
        seccomp(local, NO_CAPS, False)
