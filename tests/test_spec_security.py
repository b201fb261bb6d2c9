"""Capabilities, masked/read-only paths and sysctls, as pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import FailedPrecondition, InvalidArgument
from podvisor.workers.runtime.spec_context import bounding_caps
from podvisor.workers.runtime.spec_security import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    apparmor_profile,
    capabilities,
    masked_paths,
    readonly_paths,
)
from podvisor.workers.runtime.spec_sysctl import normalize, pod_sysctls

# A bounding set like this host's: everything but CAP_SYS_RESOURCE.
AVAILABLE = tuple(c for c in CAPABILITIES if c != "CAP_SYS_RESOURCE")
DEFAULTS_IN_ORDER = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
                     "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE"]


def caps(add: list[str] | None = None, drop: list[str] | None = None,
         privileged: bool = False, ambient: list[str] | None = None) -> dict[str, list[str]]:
    msg = api.Capability(add_capabilities=add, drop_capabilities=drop,
                         add_ambient_capabilities=ambient)
    return capabilities(msg, privileged, AVAILABLE)


def test_default_set_is_cri_o_s() -> None:
    assert set(DEFAULT_CAPABILITIES) == {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID",
        "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_KILL"}
    result = caps()
    assert result["bounding"] == result["effective"] == result["permitted"] == DEFAULTS_IN_ORDER
    assert result["inheritable"] == result["ambient"] == []


def test_add_and_drop_accept_both_spellings() -> None:
    result = caps(add=["net_admin", "CAP_SYS_TIME"], drop=["CHOWN", "cap_kill"])
    expected = [c for c in DEFAULTS_IN_ORDER if c not in ("CAP_CHOWN", "CAP_KILL")]
    expected += ["CAP_NET_ADMIN", "CAP_SYS_TIME"]
    assert sorted(result["bounding"]) == sorted(expected)


def test_drop_all_then_add_gives_only_the_adds() -> None:
    assert caps(add=["NET_BIND_SERVICE"], drop=["ALL"])["effective"] == ["CAP_NET_BIND_SERVICE"]
    assert caps(drop=["ALL"])["effective"] == []


def test_add_all_is_the_bounding_set_minus_drops() -> None:
    result = caps(add=["ALL"], drop=["CHOWN"])
    assert set(result["bounding"]) == set(AVAILABLE) - {"CAP_CHOWN"}


def test_privileged_is_exactly_the_daemon_bounding_set() -> None:
    result = caps(add=["SYS_ADMIN"], drop=["ALL"], privileged=True)
    assert result["bounding"] == list(AVAILABLE)
    assert result["inheritable"] == []


def test_unknown_and_unavailable_capabilities_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown capability"):
        caps(add=["NOT_A_CAP"])
    with pytest.raises(FailedPrecondition, match="CAP_SYS_RESOURCE"):
        caps(add=["SYS_RESOURCE"])


def test_ambient_caps_are_also_inheritable_and_permitted() -> None:
    result = caps(ambient=["NET_RAW"])
    assert result["ambient"] == result["inheritable"] == ["CAP_NET_RAW"]
    assert "CAP_NET_RAW" in result["permitted"]


def test_bounding_caps_reads_capbnd() -> None:
    status = "Name:\tx\nCapBnd:\t000001fffeffffff\n"
    assert bounding_caps(status) == AVAILABLE
    assert bounding_caps("CapBnd:\t0000000000000003\n") == ("CAP_CHOWN", "CAP_DAC_OVERRIDE")


KUBELET_MASKED = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                  "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                  "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                  "/sys/devices/virtual/powercap", "/proc/extra"]


def test_masked_paths_are_cri_o_defaults_plus_the_kubelet_s() -> None:
    assert masked_paths(api.LinuxContainerSecurityContext(), False) == sorted(DEFAULT_MASKED_PATHS)
    merged = masked_paths(api.LinuxContainerSecurityContext(masked_paths=KUBELET_MASKED), False)
    assert merged == sorted(set(DEFAULT_MASKED_PATHS) | {"/proc/extra"})
    assert "/proc/interrupts" in merged


def test_readonly_paths_from_the_cri_replace_the_defaults() -> None:
    assert readonly_paths(api.LinuxContainerSecurityContext(), False) == \
        list(DEFAULT_READONLY_PATHS)
    assert readonly_paths(api.LinuxContainerSecurityContext(readonly_paths=["/proc/sys"]),
                          False) == ["/proc/sys"]


def test_privileged_clears_masked_and_readonly_paths() -> None:
    context = api.LinuxContainerSecurityContext(masked_paths=["/proc/kcore"],
                                                readonly_paths=["/proc/sys"])
    assert masked_paths(context, True) == []
    assert readonly_paths(context, True) == []


def test_relative_masked_path_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        masked_paths(api.LinuxContainerSecurityContext(masked_paths=["proc/kcore"]), False)


def test_sysctl_slash_form_is_normalised_like_the_kubelet() -> None:
    assert normalize("net/ipv4/conf/eno2.100/rp_filter") == "net.ipv4.conf.eno2/100.rp_filter"
    assert normalize("net.ipv4.conf.eno2/100.rp_filter") == "net.ipv4.conf.eno2/100.rp_filter"
    assert normalize("kernel.shmmax") == "kernel.shmmax"


def test_namespaced_sysctls_pass() -> None:
    wanted = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000", "kernel.sem": "1 2 3 4",
              "fs.mqueue.msg_max": "20", "kernel.msgmax": "9"}
    assert pod_sysctls(wanted, host_network=False, host_ipc=False) == wanted


@pytest.mark.parametrize(("sysctls", "host_network", "host_ipc", "message"), [
    ({"net.ipv4.ip_forward": "1"}, True, False, "host network"),
    ({"kernel.shmmax": "1"}, False, True, "host IPC"),
    ({"kernel.hostname": "x"}, False, False, "not namespaced"),
    ({"vm.swappiness": "1"}, False, False, "not namespaced"),
    ({"net.ipv4/../../x": "1"}, False, False, "not a valid sysctl name"),
    ({"net.core.somaxconn": "1\nkernel.x=1"}, False, False, "newline"),
])
def test_unsafe_sysctls_are_invalid(sysctls: dict[str, str], host_network: bool, host_ipc: bool,
                                    message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        pod_sysctls(sysctls, host_network=host_network, host_ipc=host_ipc)


def loaded_profiles(tmp_path: Path) -> str:
    """A stand-in for the kernel's list of loaded AppArmor profiles."""
    path = tmp_path / "profiles"
    path.write_text("podvisor-default (enforce)\ncri-validate-deny-write (enforce)\n")
    return str(path)


@pytest.mark.parametrize("ref", ["cri-validate-deny-write", "localhost/cri-validate-deny-write"])
def test_apparmor_localhost_ref_takes_the_bare_name_or_critest_s_prefixed_one(
        tmp_path: Path, ref: str) -> None:
    sc = api.LinuxContainerSecurityContext(apparmor=api.SecurityProfile(
        profile_type=api.SecurityProfile.Localhost, localhost_ref=ref))
    assert apparmor_profile(sc, False, True, loaded_profiles(tmp_path)) == "cri-validate-deny-write"


def test_apparmor_deprecated_field_and_unloaded_profiles(tmp_path: Path) -> None:
    loaded = loaded_profiles(tmp_path)
    legacy = api.LinuxContainerSecurityContext(apparmor_profile="localhost/cri-validate-deny-write")
    assert apparmor_profile(legacy, False, True, loaded) == "cri-validate-deny-write"
    assert apparmor_profile(legacy, True, True, loaded) is None
    default = api.LinuxContainerSecurityContext(apparmor_profile="runtime/default")
    assert apparmor_profile(default, False, True, loaded) == "podvisor-default"
    missing = api.LinuxContainerSecurityContext(apparmor=api.SecurityProfile(
        profile_type=api.SecurityProfile.Localhost, localhost_ref="localhost/not-loaded"))
    with pytest.raises(FailedPrecondition, match=r"profile not-loaded \(Localhost\) is not loaded"):
        apparmor_profile(missing, False, True, loaded)
