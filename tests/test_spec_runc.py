"""Specs from the builder, run by real runc (and crun): what the container sees.

Each test builds a busybox bundle (bundle.py), writes the builder's
config.json, runs the container in the foreground under a private
``--root`` and checks the ``KEY=value`` lines its shell script prints.
Teardown: ``delete -f`` by the unique id, leftover cgroup dirs removed,
and the runtime's list is checked empty.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bundle import RUNTIMES, Runtime, cgroup_dirs, make_rootfs
from daemonlib import poll_until

from podvisor.proto import api_pb2 as api
from podvisor.workers.runtime.spec import (
    bounding_caps,
    build_container_spec,
    build_infra_spec,
    detect_node,
)
from podvisor.workers.runtime.spec_context import PodContext
from podvisor.workers.runtime.spec_security import CAPABILITIES, DEFAULT_CAPABILITIES

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs containers: needs root")

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nextra:x:2000:app\n"
SANDBOX = api.PodSandboxConfig(
    metadata=api.PodSandboxMetadata(name="spec-pod", namespace="default", uid="u-1"))
IMAGE = {"config": {"Env": ["BAZ=from-image", "FOO=image-loses"], "WorkingDir": "/"}}


def mask(names: Iterable[str]) -> int:
    return sum(1 << CAPABILITIES.index(n) for n in set(names))


def parse(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def host_pod(base: Path, **changes: Any) -> PodContext:
    """A pod on the host's namespaces (so a test needs nothing but the runtime),
    with its own resolv.conf, hosts and hostname files."""
    files = base / "podfiles"
    files.mkdir(parents=True, exist_ok=True)
    (files / "resolv.conf").write_text("nameserver 192.0.2.53\nsearch spec.test\n")
    (files / "hosts").write_text("127.0.0.1 localhost\n192.0.2.7 spec-pod\n")
    (files / "hostname").write_text("spec-pod\n")
    pod = PodContext(
        sandbox_id=uuid.uuid4().hex, hostname="spec-pod", cgroup_parent="/",
        netns_path=None, ipc_ns_path=None, uts_ns_path=None, pid_ns_path=None, shm_path=None,
        resolv_conf=str(files / "resolv.conf"), hosts_file=str(files / "hosts"),
        hostname_file=str(files / "hostname"), privileged_caps=bounding_caps(),
        oom_score_adj_floor=int(Path("/proc/self/oom_score_adj").read_text()))
    return replace(pod, **changes)


@pytest.fixture(params=["runc", "crun"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    name = str(request.param)
    if not Path(RUNTIMES[name]).exists():
        pytest.skip(f"{name} is not installed")
    rt = Runtime(name, tmp_path / f"{name}-root")
    yield rt
    assert rt.listed() == []


@pytest.fixture
def runc(tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime("runc", tmp_path / "runc-root")
    yield rt
    assert rt.listed() == []


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    make_rootfs(tmp_path / "bundle" / "rootfs", PASSWD, GROUP)
    return tmp_path / "bundle"


def config(script: str, **security: Any) -> api.ContainerConfig:
    sc = api.LinuxContainerSecurityContext(namespace_options=api.NamespaceOption(
        pid=api.CONTAINER), **security)
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name="c"), image=api.ImageSpec(image="busybox"),
        command=["sh", "-c", script], envs=[api.KeyValue(key="FOO", value=b"from-cri")],
        linux=api.LinuxContainerConfig(
            security_context=sc,
            resources=api.LinuxContainerResources(memory_limit_in_bytes=128 << 20,
                                                  cpu_shares=512, oom_score_adj=500)))


def build(bundle: Path, pod: PodContext, container: api.ContainerConfig,
          sandbox: api.PodSandboxConfig = SANDBOX) -> dict[str, Any]:
    spec = build_container_spec(container, sandbox, IMAGE, str(bundle / "rootfs"), pod,
                                container_id=uuid.uuid4().hex[:16], node=detect_node())
    return spec


def run(runtime: Runtime, bundle: Path, spec: dict[str, Any]) -> dict[str, str]:
    done = runtime.run_bundle(bundle, spec)
    assert done.returncode == 0, done.stderr + done.stdout
    assert not cgroup_dirs(str(spec["linux"]["cgroupsPath"]).lstrip("/"))
    return parse(done.stdout)


USER_SCRIPT = """
echo "ID=$(id)"; echo "CWD=$(pwd)"; echo "FOO=$FOO"; echo "BAZ=$BAZ"
touch /newfile 2>/dev/null && echo ROOTFS=writable || echo ROOTFS=readonly
echo "TIMER=$(wc -c < /proc/timer_list 2>&1)"
echo "FIRMWARE=$(ls -A /sys/firmware | wc -l)"
grep -E '^Cap(Bnd|Eff)' /proc/self/status | sed 's/:[[:space:]]*/=/'
echo "NOFILE=$(ulimit -n)"
echo "RESOLV=$(head -n 1 /etc/resolv.conf)"
echo "SYS=$(grep ' /sys sysfs ' /proc/mounts | cut -d ' ' -f 4 | cut -d , -f 1)"
"""


def test_user_env_cwd_readonly_masks_caps(runtime: Runtime, bundle: Path,
                                          tmp_path: Path) -> None:
    pod = host_pod(tmp_path)
    container = config(USER_SCRIPT, run_as_username="app", readonly_rootfs=True,
                       supplemental_groups=[3000])
    container.working_dir = "/work"
    spec = build(bundle, pod, container)
    seen = run(runtime, bundle, spec)
    assert seen["ID"] == "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra),3000"
    assert seen["CWD"] == "/work"
    assert (seen["FOO"], seen["BAZ"]) == ("from-cri", "from-image")
    assert seen["ROOTFS"] == "readonly"
    assert seen["TIMER"] == "0"            # masked: /dev/null, though the real one is root-only
    assert seen["FIRMWARE"] == "0"         # masked: an empty tmpfs
    assert int(seen["CapBnd"], 16) == mask(DEFAULT_CAPABILITIES)
    assert int(seen["CapEff"], 16) == 0    # a non-root user keeps no effective capability
    assert seen["NOFILE"] == str(spec["process"]["rlimits"][0]["soft"])
    assert seen["RESOLV"] == "nameserver 192.0.2.53"
    assert seen["SYS"] == "ro"


ROOT_SCRIPT = """
grep -E '^CapEff' /proc/self/status | sed 's/:[[:space:]]*/=/'
echo "OOM=$(cat /proc/self/oom_score_adj)"
echo "DATA=$(cat /data/hello)"
touch /data/new 2>/dev/null && echo DATAWRITE=yes || echo DATAWRITE=no
echo hi > /dev/xnull && echo DEV=ok
echo "PROCSYS=$(grep ' /proc/sys ' /proc/mounts | cut -d ' ' -f 4 | cut -d , -f 1)"
f=/sys/fs/cgroup/memory/memory.limit_in_bytes; [ -r $f ] && echo "MEMORY=$(cat $f)"
f=/sys/fs/cgroup/cpu/cpu.shares; [ -r $f ] && echo "SHARES=$(cat $f)"
echo "SHM=$(grep ' /dev/shm ' /proc/mounts | cut -d ' ' -f 4 | cut -d , -f 1)"
"""


def test_root_caps_mounts_devices_resources(runc: Runtime, bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello").write_text("world\n")
    container = config(ROOT_SCRIPT, run_as_user=api.Int64Value(),
                       capabilities=api.Capability(add_capabilities=["NET_ADMIN"],
                                                   drop_capabilities=["CHOWN"]))
    container.mounts.append(api.Mount(container_path="/data", host_path=str(data),
                                      readonly=True))
    container.devices.append(api.Device(container_path="/dev/xnull", host_path="/dev/null",
                                        permissions="rw"))
    spec = build(bundle, host_pod(tmp_path), container)
    seen = run(runc, bundle, spec)
    wanted = (set(DEFAULT_CAPABILITIES) - {"CAP_CHOWN"}) | {"CAP_NET_ADMIN"}
    assert int(seen["CapEff"], 16) == mask(wanted)
    assert int(seen["OOM"]) == max(500, spec["process"]["oomScoreAdj"])
    assert seen["DATA"] == "world"
    assert seen["DATAWRITE"] == "no"
    assert not (data / "new").exists()
    assert seen["DEV"] == "ok"
    assert seen["PROCSYS"] == "ro"
    assert seen["SHM"] == "rw"
    if "MEMORY" in seen:
        assert seen["MEMORY"] == str(128 << 20)
    if "SHARES" in seen:
        assert seen["SHARES"] == "512"


PRIVILEGED_SCRIPT = """
grep -E '^CapEff' /proc/self/status | sed 's/:[[:space:]]*/=/'
echo "SYS=$(grep ' /sys sysfs ' /proc/mounts | cut -d ' ' -f 4 | cut -d , -f 1)"
echo "FIRMWARE=$(ls -A /sys/firmware | wc -l)"
[ -c /dev/null ] && echo NULL=yes
"""


def test_privileged(runc: Runtime, bundle: Path, tmp_path: Path) -> None:
    pod = host_pod(tmp_path)
    sandbox = api.PodSandboxConfig()
    sandbox.CopyFrom(SANDBOX)
    sandbox.linux.security_context.privileged = True
    spec = build(bundle, pod, config(PRIVILEGED_SCRIPT, privileged=True), sandbox)
    host_nodes = [d["path"] for d in spec["linux"]["devices"]]
    seen = run(runc, bundle, spec)
    assert int(seen["CapEff"], 16) == mask(pod.privileged_caps)
    assert seen["SYS"] == "rw"
    assert int(seen["FIRMWARE"]) > 0 or not os.listdir("/sys/firmware")   # nothing masked
    assert seen["NULL"] == "yes"
    assert "/dev/null" in host_nodes


def _execd(proc: Path) -> list[bytes] | None:
    """The process's argv once it is no longer the runtime's ``init``."""
    args = proc.joinpath("cmdline").read_bytes().split(b"\0")
    return None if args[1:2] == [b"init"] else args


def test_infra_spec_runs_catatonit(runc: Runtime, bundle: Path, tmp_path: Path) -> None:
    catatonit = shutil.which("catatonit")
    if catatonit is None:
        pytest.skip("catatonit is not installed")
    rootfs = tmp_path / "infra" / "rootfs"
    for name in ("proc", "dev", "sys"):
        (rootfs / name).mkdir(parents=True)
    shutil.copy2(catatonit, rootfs / "catatonit")
    pod = host_pod(tmp_path, sandbox_id=uuid.uuid4().hex[:16])
    spec = build_infra_spec(SANDBOX, pod, str(rootfs), node=detect_node())
    (rootfs.parent / "config.json").write_text(json.dumps(spec))
    cid = "pvspec-infra-" + uuid.uuid4().hex[:8]
    try:
        # Detached, the container keeps whatever stdio runc had: give it none
        # that a pipe reader would wait on.
        with open(tmp_path / "runc.err", "wb") as err:
            done = subprocess.run(runc.cmd("run", "-d", "--bundle", str(rootfs.parent), cid),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err, timeout=60, check=False)
        assert done.returncode == 0, (tmp_path / "runc.err").read_text()
        state = json.loads(subprocess.run(runc.cmd("state", cid), check=True,
                                          capture_output=True, text=True).stdout)
        assert state["status"] == "running"
        # "running" is reported once the start is sent; runc's init may not
        # have exec'd the process yet.
        proc = Path(f"/proc/{state['pid']}")
        cmdline = poll_until(lambda: _execd(proc), 30, what="the infra's exec")
        assert cmdline[:2] == [b"/catatonit", b"-P"]
        status = parse(proc.joinpath("status").read_text().replace(":\t", "="))
        assert int(status["CapEff"], 16) == 0
        assert status["NoNewPrivs"] == "1"
    finally:
        subprocess.run(runc.cmd("delete", "-f", cid), capture_output=True, check=False)
        for leftover in cgroup_dirs(str(spec["linux"]["cgroupsPath"]).lstrip("/")):
            os.rmdir(leftover)
