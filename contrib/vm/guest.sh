#!/bin/bash
# guest.sh CMD... - runs inside the VM (../shared/vm/run.sh), in the share
# that contrib/vm/host.sh filled: mounts the venv, unpacks podvisor into it
# and the tree onto the VM's own disk, then runs CMD in the tree with the venv first on
# PATH. Exit status: CMD's.
set -euo pipefail
t0=$(date +%s.%N)
VENV=$(cat venv.path)
SRC=/opt/podvisor
# The cached venv read-only from its image, this run's podvisor written
# over it through an overlay.
modprobe -q loop || true
mkdir -p "$VENV" /run/pv-venv/lower /run/pv-venv/upper /run/pv-venv/work
mount -o loop,ro venv.img /run/pv-venv/lower
mount -t overlay overlay -o lowerdir=/run/pv-venv/lower,upperdir=/run/pv-venv/upper,workdir=/run/pv-venv/work "$VENV"
tar -xf podvisor.tar -C "$VENV"
mkdir -p "$SRC"
tar -xf tree.tar -C "$SRC"
install -m 0755 bin/* /usr/local/bin/
# apparmor_parser and its includes (host.sh vm_apparmor), for podvisor's
# default profile and critest's.
[ ! -f apparmor.tar ] || tar -xf apparmor.tar -C /
[ -e /usr/bin/docker-registry ] || ln -s /usr/local/bin/docker-registry /usr/bin/docker-registry
echo "[guest] $(cut -d' ' -f1 /proc/uptime)s since boot; unpacked in" \
     "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
export PATH=$VENV/bin:$PATH VM_SHARE=$PWD PODVISOR_TEST_LOGS=$PWD/logs
cd "$SRC"
exec "$@"
