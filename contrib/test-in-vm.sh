#!/usr/bin/env bash
# Run tests/vm inside a systemd VM (../shared/vm), pure cgroup v2 unless
# VM_APPEND boots it hybrid or v1, as root from the checkout:
#
#   bash contrib/test-in-vm.sh                     # every test of tests/vm
#   bash contrib/test-in-vm.sh -k systemd -x       # extra arguments go to pytest
#   bash contrib/test-in-vm.sh tests/vm/test_pod_cgroups.py   # some tests only
#
# The cgroup hierarchy is the VM kernel's command line (VM_APPEND, appended
# after ../shared/vm/run.sh's systemd.unified_cgroup_hierarchy=1, so a later
# value wins; it replaces run.sh's default "quiet", so keep that):
#
#   bash contrib/test-in-vm.sh                     # pure v2
#   VM_APPEND='quiet systemd.unified_cgroup_hierarchy=0' \
#       bash contrib/test-in-vm.sh                 # hybrid: v1 controllers, cgroup2 at unified/
#   VM_APPEND='quiet systemd.unified_cgroup_hierarchy=0 systemd.legacy_systemd_cgroup_controller=1' \
#       bash contrib/test-in-vm.sh                 # pure v1: no cgroup2 mount
#
# pytest's report header names the hierarchy the VM came up with
# ("cgroups: v2|hybrid|v1; ..."). The other knobs of run.sh (VM_MEM,
# VM_CPUS, VM_CONSOLE, ...) pass through the same way.
#
# Builds the VM image if it is missing, the VM's venv on the host (cached in
# /var/cache/podvisor-vm, keyed by the requirements, so a rerun only stages
# podvisor and the tests: a few seconds), boots the VM with the checkout's
# podvisor, tests, Debian's docker-registry and apparmor_parser in its share, and runs
# `pytest tests/vm` there (the daemons' logs end up in
# /var/cache/podvisor-vm/logs). The last line is pytest's summary; the exit status
# is pytest's (124: the VM ran out of VM_TIMEOUT, default 1200 s).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=contrib/vm/host.sh
. contrib/vm/host.sh

[ "$(id -u)" = 0 ] || { echo "test-in-vm.sh: run as root" >&2; exit 2; }
[ -x "$HOST_PYTHON" ] || { echo "test-in-vm.sh: no $HOST_PYTHON (run contrib/install.sh)" >&2; exit 2; }
mkdir -p "$CACHE"
vm_image
vm_venv
vm_share
vm_apparmor
# The daemons' logs outlive the VM (tests/vm keep them in the share).
trap 'rm -rf "$CACHE/logs"; [ ! -d "$SHARE/logs" ] || mv "$SHARE/logs" "$CACHE/logs"; rm -rf "$SHARE"' EXIT
say "staged podvisor and the tests; daemon logs will be in $CACHE/logs"
export VM_TIMEOUT=${VM_TIMEOUT:-1200}
rc=0
# Arguments naming tests replace tests/vm; others are options added to it.
case ${1:-} in tests/*) ;; *) set -- tests/vm "$@" ;; esac
vm_run python -m pytest -p no:cacheprovider "$@" || rc=$?
exit "$rc"
