"""Capabilities, masked/read-only paths and sysctls, as pure functions."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import FailedPrecondition, InvalidArgument
from podvisor.workers.runtime import apparmor_default
from podvisor.workers.runtime.spec_context import bounding_caps
from podvisor.workers.runtime.spec_security import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    apparmor_profile,
    capabilities,
    masked_paths,
    pod_security,
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
    loader = FakeParser(tmp_path)
    legacy = api.LinuxContainerSecurityContext(apparmor_profile="localhost/cri-validate-deny-write")
    assert apparmor_profile(legacy, False, True, loaded,
                            loader.default) == "cri-validate-deny-write"
    assert apparmor_profile(legacy, True, True, loaded, loader.default) is None
    default = api.LinuxContainerSecurityContext(apparmor_profile="runtime/default")
    assert apparmor_profile(default, False, True, loaded, loader.default) == "podvisor-default"
    missing = api.LinuxContainerSecurityContext(apparmor=api.SecurityProfile(
        profile_type=api.SecurityProfile.Localhost, localhost_ref="localhost/not-loaded"))
    with pytest.raises(FailedPrecondition, match=r"profile not-loaded \(Localhost\) is not loaded"):
        apparmor_profile(missing, False, True, loaded, loader.default)



class FakeParser:
    """An apparmor_parser stand-in and a loader that finds it: it records
    its arguments and the text it read, then lists the profile as the
    kernel would, or fails as ``fail`` says."""

    def __init__(self, tmp_path: Path, installed: bool = True,
                 uid_map: str = "0 0 4294967295") -> None:
        base = tmp_path / "aa"
        (base / "bin").mkdir(parents=True)
        (base / "uid_map").write_text(f"{uid_map}\n")
        self.calls = base / "calls"
        self.text = base / "text"
        self.fail = base / "fail"
        self.profiles = base / "profiles"
        self.profiles.write_text("other (complain)\n")
        if installed:
            script = base / "bin" / "apparmor_parser"
            script.write_text(
                "#!/bin/sh\n"
                f"printf '%s\\n' \"$*\" >> {self.calls}\n"
                f"cat > {self.text}\n"
                f"if [ -e {self.fail} ]; then cat {self.fail} >&2; exit 1; fi\n"
                f"echo 'podvisor-default (enforce)' >> {self.profiles}\n")
            script.chmod(0o755)
        self.default = apparmor_default.DefaultProfile(
            loaded=str(self.profiles), policy_dir=str(base / "etc"),
            search_path=str(base / "bin"), uid_map=str(base / "uid_map"))

    def runs(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


NOTHING = api.LinuxContainerSecurityContext()
RUNTIME_DEFAULT = [
    api.LinuxContainerSecurityContext(apparmor_profile="runtime/default"),
    api.LinuxContainerSecurityContext(apparmor=api.SecurityProfile(
        profile_type=api.SecurityProfile.RuntimeDefault)),
]


def test_a_container_that_asks_for_nothing_gets_the_default_loaded_once(
        tmp_path: Path) -> None:
    fake = FakeParser(tmp_path)
    assert apparmor_profile(NOTHING, False, True, default=fake.default) == "podvisor-default"
    assert fake.runs() == ["-Kr"]
    assert "profile podvisor-default flags=(attach_disconnected,mediate_deleted) {" \
        in fake.text.read_text()
    # Loaded by this process and still in the kernel: no second parser run.
    for sc in RUNTIME_DEFAULT:
        assert apparmor_profile(sc, False, True, default=fake.default) == "podvisor-default"
    assert fake.runs() == ["-Kr"]
    # An administrator unloaded it: the next request loads it again.
    fake.profiles.write_text("other (complain)\n")
    assert apparmor_profile(NOTHING, False, True, default=fake.default) == "podvisor-default"
    assert fake.runs() == ["-Kr", "-Kr"]


def test_a_new_process_replaces_a_profile_already_in_the_kernel(tmp_path: Path) -> None:
    # An older podvisor-default is listed; this process has not loaded it.
    fake = FakeParser(tmp_path)
    fake.profiles.write_text("podvisor-default (enforce)\n")
    assert fake.default.ensure() == "podvisor-default"
    assert fake.runs() == ["-Kr"]


def test_asking_for_nothing_stays_unconfined_where_the_default_cannot_apply(
        tmp_path: Path) -> None:
    fake = FakeParser(tmp_path)
    assert apparmor_profile(NOTHING, False, False, default=fake.default) is None  # no AppArmor
    assert apparmor_profile(NOTHING, True, True, default=fake.default) is None    # privileged
    for sc in RUNTIME_DEFAULT:
        assert apparmor_profile(sc, True, True, default=fake.default) is None
    assert fake.runs() == []
    # AppArmor on, apparmor_parser missing: containerd's hostSupports is
    # false there, so nothing asked is unconfined, and asking is refused.
    missing = FakeParser(tmp_path / "missing", installed=False)
    assert apparmor_profile(NOTHING, False, True, default=missing.default) is None
    for sc in RUNTIME_DEFAULT:
        with pytest.raises(FailedPrecondition, match="apparmor_parser is not installed"):
            apparmor_profile(sc, False, True, default=missing.default)


def test_in_a_user_namespace_nothing_asked_is_unconfined_and_nothing_loaded(
        tmp_path: Path) -> None:
    # The kernel refuses profile loads from a user namespace (podvisor in a
    # container): containerd's hostSupports is false there too.
    nested = FakeParser(tmp_path, uid_map="0 100000 65536")
    assert apparmor_profile(NOTHING, False, True, default=nested.default) is None
    assert nested.runs() == []
    assert apparmor_default.in_user_namespace(str(tmp_path / "aa" / "uid_map"))


def test_a_failed_load_is_failed_precondition_never_unconfined(tmp_path: Path) -> None:
    fake = FakeParser(tmp_path)
    fake.fail.write_text("AppArmor parser error at line 7: syntax error\n")
    for sc in [NOTHING, *RUNTIME_DEFAULT]:
        with pytest.raises(FailedPrecondition,
                           match=r"podvisor-default cannot be loaded: apparmor_parser exited "
                                 r"with 1: AppArmor parser error at line 7"):
            apparmor_profile(sc, False, True, default=fake.default)
    # Fixed on the node: the next request loads it.
    fake.fail.unlink()
    assert apparmor_profile(NOTHING, False, True, default=fake.default) == "podvisor-default"


def test_a_pod_that_asks_for_nothing_keeps_its_infra_process_unconfined(
        tmp_path: Path) -> None:
    fake = FakeParser(tmp_path)
    pod = pod_security(api.LinuxSandboxSecurityContext())
    assert apparmor_profile(pod, False, True, default=fake.default) is None
    assert fake.runs() == []
    asked = pod_security(api.LinuxSandboxSecurityContext(apparmor=api.SecurityProfile(
        profile_type=api.SecurityProfile.RuntimeDefault)))
    assert apparmor_profile(asked, False, True, default=fake.default) == "podvisor-default"


def test_profile_header_follows_the_node_s_policy_directory(tmp_path: Path) -> None:
    bare = apparmor_default.profile_text(policy_dir=str(tmp_path))
    assert bare.startswith("@{PROC}=/proc/\n") and "#include" not in bare
    for entry in ("abi/3.0", "tunables/global", "abstractions/base"):
        (tmp_path / entry).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / entry).write_text("")
    full = apparmor_default.profile_text(policy_dir=str(tmp_path), daemon_label="podvisor-node")
    assert full.startswith("abi <abi/3.0>,\n#include <tunables/global>\n")
    assert "  #include <abstractions/base>\n" in full
    assert "signal (receive) peer=podvisor-node," in full
    assert full.count("peer=unconfined") == 1


def test_own_label_reads_the_profile_name(tmp_path: Path) -> None:
    current = tmp_path / "current"
    current.write_text("podvisor-node (enforce)\n")
    assert apparmor_default.own_label(str(current)) == "podvisor-node"
    current.write_text("unconfined\n")
    assert apparmor_default.own_label(str(current)) == "unconfined"
    assert apparmor_default.own_label(str(tmp_path / "none")) == "unconfined"


def _glob(pattern: str) -> re.Pattern[str]:
    """An AppArmor path glob as a regex (the subset the profile uses)."""
    pattern = pattern.replace("@{PROC}/", "/proc/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def denied(path: str, access: str) -> bool:
    for line in apparmor_default.RULES.splitlines():
        rule = re.fullmatch(r"\s*deny (/\S+|@\{PROC\}\S*) ([rwklx]+),", line)
        if rule and access in rule.group(2) and _glob(rule.group(1)).fullmatch(path):
            return True
    return False


@pytest.mark.parametrize("path", [
    "/proc/sysrq-trigger", "/proc/sys/kernel/hostname", "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/modprobe", "/proc/sys/kernel/sched_rt_runtime_us",
    "/proc/sys/kernel/seccomp/actions_logged", "/proc/sys/kernel/shmmax/x",
    "/proc/sys/net/ipv4/ip_forward", "/proc/sys/vm/drop_caches",
    "/proc/sys/fs/binfmt_misc/register", "/proc/sysvipc/shm", "/proc/scsi/scsi",
    "/proc/acpi/wakeup", "/proc/irq/0/smp_affinity", "/proc/bus/pci/devices",
    "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/fs/bpf/map",
    "/sys/fs/fuse/connections/1/abort", "/sys/class/net/eth0/mtu", "/sys/power/state",
])
def test_profile_denies_writes_to_the_node_s_files(path: str) -> None:
    assert denied(path, "w")


@pytest.mark.parametrize("path", [
    "/proc/1/oom_score_adj", "/proc/42/task/42/comm", "/proc/sys/kernel/shmmax",
    "/proc/sys/kernel/shm_rmid_forced", "/proc/sys/kernel/msgmnb", "/proc/sys/kernel/sem",
    "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pod/cpu.weight", "/tmp/file", "/etc/hosts",
])
def test_profile_leaves_the_container_s_own_writes(path: str) -> None:
    assert not denied(path, "w")


def test_profile_hides_the_kernel_s_secrets_and_leaves_other_reads() -> None:
    for path in ("/proc/kcore", "/sys/firmware/efi/efivars/x",
                 "/sys/kernel/security/apparmor/profiles",
                 "/sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj"):
        assert denied(path, "r"), path
    for path in ("/proc/cpuinfo", "/proc/sys/kernel/hostname", "/sys/fs/cgroup/cpu.max"):
        assert not denied(path, "r"), path
    assert "\n  deny mount,\n" in apparmor_default.RULES


def test_profile_compiles_where_apparmor_parser_is_installed(tmp_path: Path) -> None:
    parser = shutil.which("apparmor_parser", path=apparmor_default.PARSER_PATH)
    if parser is None:
        pytest.skip("no apparmor_parser here (the VM test loads the profile)")
    # -Q: compile only, never touch the kernel; -S: the binary to stdout.
    done = subprocess.run([parser, "-QKS"], input=apparmor_default.profile_text().encode(),
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
