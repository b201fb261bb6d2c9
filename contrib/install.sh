#!/usr/bin/env bash
# Install podvisor on Debian 12 from this checkout, then start the daemon.
#
#   sudo contrib/install.sh              # install and start
#   sudo contrib/install.sh --no-start   # install only (CI, packaging)
#
# Installs the OS packages podvisor runs on (runc, crun, CNI plugins,
# catatonit, apparmor where the kernel runs it) and the ones its tests and benches use (docker-registry,
# busybox-static, skopeo, htpasswd, nftables, xz; containerd, left off),
# creates .venv with the project and its test tools, writes a default pod network (contrib/default-cni.sh) and
# /etc/crictl.yaml where none exist, and starts podvisor: as the systemd
# unit contrib/podvisor.service where systemd runs, otherwise in the
# background with its log in /var/log/podvisor.log.
set -euo pipefail
cd "$(dirname "$0")/.."
start=1
[ "${1:-}" = "--no-start" ] && start=0

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
    runc crun containernetworking-plugins catatonit iproute2 iptables \
    docker-registry busybox-static skopeo apache2-utils python3-venv ca-certificates \
    nftables xz-utils
# apparmor_parser, where the kernel runs AppArmor: podvisor loads its default
# profile (podvisor-default) with it. A node without AppArmor needs none.
if [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ]; then
    apt-get install -y -q --no-install-recommends apparmor
fi
# The cgroup v2 + systemd VM the tests in tests/vm run in (contrib/test-in-vm.sh,
# ../shared/vm/build.sh).
apt-get install -y -q --no-install-recommends \
    qemu-system-x86 qemu-utils mmdebstrap cpio e2fsprogs

# containerd: the peer runtime bench/density.py measures podvisor against
# (../shared/conformance/containerd-up.sh starts it by hand). Two runtimes
# must never run at once, so where it was not installed before, its service
# stays off.
had_containerd=0
dpkg -s containerd >/dev/null 2>&1 && had_containerd=1
apt-get install -y -q --no-install-recommends containerd
if [ "$had_containerd" = 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now containerd.service >/dev/null 2>&1 || true
fi

# Debian starts its registry on :5000 where systemd runs; podvisor's tests
# start their own on loopback, so keep the packaged one off.
if [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
fi

# crun 1.8, podvisor's default handler, refuses every container on a hybrid
# cgroup host whose v2 hierarchy holds a controller ("cgroups in hybrid mode
# not supported"). Give such controllers (typically hugetlb) their own v1
# hierarchy, as a systemd hybrid host does; runc works either way, so where
# that mount fails, make runc the default (default_runtime = "runc").
unified=/sys/fs/cgroup/unified/cgroup.controllers
if [ -r "$unified" ]; then
    for controller in $(cat "$unified"); do
        target=/sys/fs/cgroup/$controller
        mountpoint -q "$target" && continue
        mkdir -p "$target"
        mount -t cgroup -o "$controller" cgroup "$target" \
            || echo "warning: could not mount the $controller cgroup v1 hierarchy; crun, the default handler, may refuse containers: set [podvisor.runtime] default_runtime = \"runc\" in /etc/podvisor/podvisor.toml"
    done
fi

# A node with no pod network config is never NetworkReady; give it one, as
# CRI-O's packages do, unless one is there.
bash contrib/default-cni.sh /etc/cni/net.d

# crictl warns on every call without a config; point it at podvisor.
if [ -e /etc/crictl.yaml ]; then
    echo "crictl: /etc/crictl.yaml exists; left as it is"
else
    cat > /etc/crictl.yaml <<'YAML'
runtime-endpoint: unix:///run/podvisor/podvisor.sock
image-endpoint: unix:///run/podvisor/podvisor.sock
timeout: 30
YAML
    echo "crictl: wrote /etc/crictl.yaml (endpoint unix:///run/podvisor/podvisor.sock)"
fi

# crictl drives the load tests as an operator's tools would; Debian has no
# package of it, so it comes from the conformance kit beside the checkout.
kit=../shared/conformance
if [ -x "$kit/install-tools.sh" ]; then
    "$kit/install-tools.sh" >/dev/null && echo "crictl and critest installed from $kit"
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'

[ "$start" = 1 ] || exit 0
if [ -d /run/systemd/system ]; then
    sed "s|@PODVISOR@|$PWD/.venv/bin/podvisor|" contrib/podvisor.service \
        > /etc/systemd/system/podvisor.service
    systemctl daemon-reload
    systemctl enable --now podvisor.service
    echo "podvisor started: systemctl status podvisor; .venv/bin/podvisor status"
else
    nohup .venv/bin/podvisor >>/var/log/podvisor.log 2>&1 </dev/null &
    echo "podvisor started as pid $!; log in /var/log/podvisor.log; .venv/bin/podvisor status"
fi
