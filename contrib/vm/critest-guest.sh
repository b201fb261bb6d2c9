#!/bin/bash
# critest-guest.sh [critest args...] - inside the VM, through guest.sh (so
# podvisor is installed and on PATH): the conformance kit's setup, the VM's
# way. The kit's registry storage (unpacked from the share) served on
# 127.0.0.1:5000, the kit's CNI config and registries.conf mapping, podvisor
# with emulation-long worker start-up and PODVISOR_CGROUP_MANAGER (systemd
# unless set), then the kit's run-critest.sh. Its summary line is the last
# line; the exit status is critest's.
set -uo pipefail
SHARE=${VM_SHARE:?}
KIT=$SHARE/kit
# shellcheck source=/dev/null # written by critest-in-vm.sh
[ ! -f "$SHARE/env.sh" ] || . "$SHARE/env.sh"
DRIVER=${PODVISOR_CGROUP_MANAGER:-systemd}
ETC=/etc/podvisor-harness RUNROOT=/run/podvisor-harness ROOT=/var/lib/podvisor-harness
SOCK=$RUNROOT/podvisor.sock
LOGS=$SHARE/logs
mkdir -p "$LOGS" "$ETC/conf.d" "$RUNROOT" "$ROOT" /var/lib/harness-registry

tar -xf "$SHARE/registry.tar" -C /var/lib/harness-registry
# critest runs apparmor_parser (guest.sh unpacked it) through sudo: this
# guest runs everything as root, so sudo only runs its arguments.
if [ -f "$SHARE/apparmor.tar" ]; then
    printf '#!/bin/sh\n[ "$(id -u)" = 0 ] || { echo "sudo: only root here" >&2; exit 1; }\nexec "$@"\n' \
        > /usr/local/bin/sudo
    chmod 755 /usr/local/bin/sudo
fi
cat > "$ETC/registry.yml" <<'YAML'
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/harness-registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
YAML
docker-registry serve "$ETC/registry.yml" >"$LOGS/registry.log" 2>&1 </dev/null &
registry=$!

CNI_CONF_DIR=$ETC/net.d bash "$KIT/cni.sh" >/dev/null
cat > "$ETC/registries.conf" <<'TOML'
unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "registry.k8s.io"
location = "127.0.0.1:5000"
insecure = true
[[registry]]
prefix = "k8s.gcr.io"
location = "127.0.0.1:5000"
insecure = true
[[registry]]
prefix = "gcr.io"
location = "127.0.0.1:5000"
insecure = true
TOML
# One worker per pool and minutes for READY: a worker's imports take tens
# of seconds under emulation.
cat > "$ETC/podvisor.toml" <<TOML
[podvisor]
root = "$ROOT"
runroot = "$RUNROOT"
[podvisor.api]
listen = "$SOCK"
[podvisor.image]
registries_conf = "$ETC/registries.conf"
[podvisor.network]
network_dir = "$ETC/net.d"
plugin_dirs = ["/usr/lib/cni"]
[podvisor.metrics]
metrics_port = 0
[podvisor.runtime]
cgroup_manager = "$DRIVER"
[podvisor.workers]
image = 1
storage = 1
runtime = 1
net = 1
start_timeout = 300.0
heartbeat_interval = 1.0
heartbeat_liveness = 30
TOML
setsid podvisor --config "$ETC/podvisor.toml" --config-dir "$ETC/conf.d" run \
    >"$LOGS/podvisor.log" 2>&1 </dev/null &
podvisor=$!

stop() {
    local ids ctrs
    C=(crictl --runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK" --timeout 300s)
    ids=$("${C[@]}" pods -q 2>/dev/null)
    if [ -n "$ids" ]; then
        ctrs=$("${C[@]}" ps -aq 2>/dev/null)
        # shellcheck disable=SC2086 # lists of ids
        [ -z "$ctrs" ] || "${C[@]}" rm -f $ctrs >/dev/null 2>&1
        # shellcheck disable=SC2086
        "${C[@]}" stopp $ids >/dev/null 2>&1
        # shellcheck disable=SC2086
        "${C[@]}" rmp $ids >/dev/null 2>&1
    fi
    kill -TERM "$podvisor" 2>/dev/null
    for _ in $(seq 1 120); do kill -0 "$podvisor" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$podvisor" 2>/dev/null
    kill "$registry" 2>/dev/null
    wait
} >>"$LOGS/teardown.log" 2>&1
trap stop EXIT

for _ in $(seq 1 300); do
    if ! kill -0 "$podvisor" 2>/dev/null; then
        echo "podvisor exited:"; tail -20 "$LOGS/podvisor.log"; exit 1
    fi
    # Every worker READY (the rows after the two header lines, up to the
    # "streaming: ..." line that ends the table), but the stream worker,
    # NOT_STARTED until the first Exec, Attach or PortForward starts it;
    # the registry listening.
    if podvisor --config "$ETC/podvisor.toml" --config-dir "$ETC/conf.d" status 2>/dev/null \
            | awk '/^streaming:/ { exit }
                   NR > 2 && $4 != "READY" && $4 != "NOT_STARTED" { bad = 1 } NR > 2 { rows++ }
                   END { exit bad || rows == 0 }' \
            && (exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null; then
        break
    fi
    sleep 2
done
echo "[guest] podvisor ($DRIVER driver) and the registry up after $(cut -d' ' -f1 /proc/uptime)s"
REPORT_DIR=$SHARE/reports CRITEST=/usr/local/bin/critest \
    bash "$KIT/run-critest.sh" "unix://$SOCK" --ginkgo.timeout=12h "$@"
