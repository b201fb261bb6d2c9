"""Seccomp, AppArmor and SELinux through the CRI socket, with the default handler (crun).

Seccomp is observed from inside the container: ``Seccomp:`` in
/proc/self/status (0 none, 2 a filter) and what a blocked call answers.
This host runs neither AppArmor nor SELinux, so asking for either is
FAILED_PRECONDITION, and nothing of the refused container is left.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from podfixtures import IDLE, Node

from podvisor.proto import api_pb2 as api

pytestmark = pytest.mark.timeout(240)

BLOCK_CHMOD = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["chmod", "fchmodat", "fchmodat2"],
                             "action": "SCMP_ACT_ERRNO"}]}
DEFAULT = api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault)
UNCONFINED = api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined)


@pytest.fixture(scope="module")
def pod(n: Node) -> tuple[str, api.PodSandboxConfig]:
    config = n.pod_config("seccomp")
    config.linux.security_context.privileged = True  # for the privileged case
    return n.run_pod(config), config


def container(n: Node, pod: tuple[str, api.PodSandboxConfig], name: str,
              **security: object) -> str:
    config = n.container_config(name, IDLE)
    config.linux.security_context.MergeFrom(api.LinuxContainerSecurityContext(**security))
    cid = n.run(pod[0], pod[1], config)
    n.wait_state(cid, api.CONTAINER_RUNNING)
    return cid


def seccomp_mode(n: Node, cid: str) -> str:
    status = n.exec(cid, "cat", "/proc/self/status").stdout.decode()
    [line] = [x for x in status.splitlines() if x.startswith("Seccomp:")]
    return line.split()[1]


def refused(n: Node, pod: tuple[str, api.PodSandboxConfig], name: str,
            **security: object) -> grpc.RpcError:
    config = n.container_config(name, IDLE)
    config.linux.security_context.MergeFrom(api.LinuxContainerSecurityContext(**security))
    with pytest.raises(grpc.RpcError) as caught:
        n.create(pod[0], pod[1], config)
    listed = n.daemon.runtime.ListContainers(api.ListContainersRequest(), timeout=10).containers
    assert name not in {c.metadata.name for c in listed}
    return caught.value


def test_runtime_default_filters_and_blocks_sethostname(
        n: Node, pod: tuple[str, api.PodSandboxConfig]) -> None:
    cid = container(n, pod, "default", seccomp=DEFAULT)
    assert seccomp_mode(n, cid) == "2"
    blocked = n.exec(cid, "hostname", "elsewhere")
    assert blocked.exit_code != 0
    assert b"Operation not permitted" in blocked.stderr
    # Ordinary work goes on under the filter.
    done = n.exec(cid, "sh", "-c", "echo ok > /f && cat /f")
    assert done.stdout == b"ok\n", done.stderr


def test_runtime_default_with_sys_admin_allows_sethostname(
        n: Node, pod: tuple[str, api.PodSandboxConfig]) -> None:
    cid = container(n, pod, "admin", seccomp=DEFAULT,
                    capabilities=api.Capability(add_capabilities=["SYS_ADMIN"]))
    assert seccomp_mode(n, cid) == "2"
    done = n.exec(cid, "hostname", "renamed")
    assert done.exit_code == 0, done.stderr
    assert n.exec(cid, "hostname").stdout == b"renamed\n"


def test_unconfined_unset_and_privileged_run_without_a_filter(
        n: Node, pod: tuple[str, api.PodSandboxConfig]) -> None:
    assert seccomp_mode(n, container(n, pod, "unconfined", seccomp=UNCONFINED)) == "0"
    assert seccomp_mode(n, container(n, pod, "unset")) == "0"
    assert seccomp_mode(n, container(n, pod, "privileged", seccomp=DEFAULT,
                                     privileged=True)) == "0"


def test_a_localhost_profile_blocking_chmod_blocks_it(
        n: Node, pod: tuple[str, api.PodSandboxConfig], tmp_path: Path) -> None:
    profile = tmp_path / "block-chmod.json"
    profile.write_text(json.dumps(BLOCK_CHMOD))
    cid = container(n, pod, "localhost", seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfile.Localhost, localhost_ref=str(profile)))
    assert seccomp_mode(n, cid) == "2"
    blocked = n.exec(cid, "busybox", "chmod", "400", "/")
    assert blocked.exit_code != 0 and b"Operation not permitted" in blocked.stderr
    # The deprecated path form names the same file.
    legacy = container(n, pod, "legacy", seccomp_profile_path=f"localhost/{profile}")
    assert n.exec(legacy, "busybox", "chmod", "400", "/").exit_code != 0


def test_a_missing_or_broken_profile_is_refused_leaving_nothing(
        n: Node, pod: tuple[str, api.PodSandboxConfig], tmp_path: Path) -> None:
    missing = refused(n, pod, "missing", seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfile.Localhost, localhost_ref=str(tmp_path / "none.json")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert "none.json" in (missing.details() or "")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    bad = refused(n, pod, "broken", seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfile.Localhost, localhost_ref=str(broken)))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "not JSON" in (bad.details() or "")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"defaultAction": "SCMP_ACT_MAYBE"}))
    assert refused(n, pod, "wrong", seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfile.Localhost,
        localhost_ref=str(wrong))).code() == grpc.StatusCode.INVALID_ARGUMENT
    relative = refused(n, pod, "relative", seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfile.Localhost, localhost_ref="profiles/x.json"))
    assert relative.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_apparmor_and_selinux_are_refused_on_a_node_without_them(
        n: Node, pod: tuple[str, api.PodSandboxConfig]) -> None:
    for profile in (DEFAULT, api.SecurityProfile(profile_type=api.SecurityProfile.Localhost,
                                                 localhost_ref="my-profile")):
        error = refused(n, pod, "apparmor", apparmor=profile)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "AppArmor is not enabled" in (error.details() or "")
    error = refused(n, pod, "selinux", selinux_options=api.SELinuxOption(type="container_t"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "SELinux is not enabled" in (error.details() or "")
    # Unconfined and empty ask for nothing.
    assert seccomp_mode(n, container(n, pod, "no-lsm", apparmor=UNCONFINED,
                                     selinux_options=api.SELinuxOption())) == "0"


def test_pod_level_profiles_confine_the_infra_or_refuse_the_pod(n: Node) -> None:
    config = n.pod_config("pod-seccomp")
    config.linux.security_context.seccomp.CopyFrom(DEFAULT)
    pod_id = n.run_pod(config)
    info = json.loads(n.pod_status(pod_id, verbose=True).info["info"])
    status = Path(f"/proc/{info['infra']['pid']}/status").read_text()
    assert "Seccomp:\t2" in status
    n.remove_pod(pod_id)
    refused_pod = n.pod_config("pod-selinux")
    refused_pod.linux.security_context.selinux_options.type = "spc_t"
    with pytest.raises(grpc.RpcError) as caught:
        n.run_pod(refused_pod)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    pods = n.daemon.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items
    assert "pod-selinux" not in {p.metadata.name for p in pods}
