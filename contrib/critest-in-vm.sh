#!/usr/bin/env bash
# The CRI validation suite (critest) against podvisor inside the pure cgroup
# v2 + systemd VM, as root from the checkout: a one-off report beside the
# host's (cgroup v1) result of ../shared/conformance/critest-podvisor.sh.
#
#   bash contrib/critest-in-vm.sh                          # the whole suite: hours under emulation
#   bash contrib/critest-in-vm.sh --ginkgo.focus='Image'   # critest arguments
#   PODVISOR_CGROUP_MANAGER=cgroupfs bash contrib/critest-in-vm.sh   # systemd by default
#
# Stages what contrib/test-in-vm.sh does (podvisor, the cached venv), plus
# the conformance kit's scripts, critest and crictl (static) and its
# registry storage (/var/lib/harness-registry, filled by the kit's
# registry-up.sh and images.py first if it holds no images), then runs
# contrib/vm/critest-guest.sh in the VM. Reports (junit.xml, critest.log,
# the daemon's log) end up in /var/cache/podvisor-vm/critest/. The last line
# is critest's summary; the exit status is critest's (124: VM_TIMEOUT,
# default 6 h, ran out).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=contrib/vm/host.sh
. contrib/vm/host.sh

[ "$(id -u)" = 0 ] || { echo "critest-in-vm.sh: run as root" >&2; exit 2; }
[ -x "$HOST_PYTHON" ] || { echo "critest-in-vm.sh: no $HOST_PYTHON (run contrib/install.sh)" >&2; exit 2; }
kit=$SHARED/conformance
store=/var/lib/harness-registry
mkdir -p "$CACHE"
if [ ! -d "$store/docker/registry/v2/repositories/e2e-test-images" ]; then
    say "filling the kit's registry storage ($kit/registry-up.sh, images.py)"
    "$kit/registry-up.sh" >&2
    "$kit/images.py" >/dev/null
fi
vm_image
vm_venv
vm_share
reports=$CACHE/critest
trap 'rm -rf "$reports"; mkdir -p "$reports"; cp -r "$SHARE/reports/." "$SHARE/logs/." "$reports/" 2>/dev/null; rm -rf "$SHARE"' EXIT
mkdir "$SHARE/kit"
cp "$kit"/*.sh "$kit"/*.yaml "$SHARE/kit/"
for tool in critest crictl; do xz -dc "$kit/bin/$tool.xz" > "$SHARE/bin/$tool"; done
tar -C "$store" -cf "$SHARE/registry.tar" .
# critest loads the AppArmor specs' profiles with `sudo apparmor_parser`:
# critest-guest.sh adds a root-only sudo to vm_apparmor's parser.
vm_apparmor
cp contrib/vm/critest-guest.sh "$SHARE/"
say "staged; reports will be in $reports"
export VM_TIMEOUT=${VM_TIMEOUT:-21600}
rc=0
PODVISOR_CGROUP_MANAGER=${PODVISOR_CGROUP_MANAGER:-systemd}
printf 'export PODVISOR_CGROUP_MANAGER=%q\n' "$PODVISOR_CGROUP_MANAGER" > "$SHARE/env.sh"
vm_run bash /mnt/share/critest-guest.sh "$@" || rc=$?
exit "$rc"
