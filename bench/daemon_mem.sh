#!/bin/bash
# daemon_mem.sh [PODVISOR] - the daemon's memory in bench/density.py's order,
# with every process shown: what mem-pods.sh's "daemon PSS" counts.
#
# One harness podvisor (the kit's podvisor-up.sh; PODVISOR, default this
# checkout's .venv/bin/podvisor): crictl-parallel-pods.sh with 10 and then 50
# pods once (as density.py runs them before its memory figures), 65 s so the
# worker zygote has exited (zygote_idle_exit, 60 s), then per process PSS,
# private dirty, anon and file PSS of the supervisor and its descendants
# (monitors and containers left out), then mem-pods.sh with 10 pods and the
# same table while they run; podvisor-down.sh at the end. Only one runtime
# may run: take the kit's lock around it.
#
#     flock /tmp/critest.lock bench/daemon_mem.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
KIT=$HERE/../shared/conformance
EP=unix:///run/podvisor-harness/podvisor.sock
export PODVISOR=${1:-$HERE/.venv/bin/podvisor}
C=(crictl --runtime-endpoint "$EP" --image-endpoint "$EP" --timeout 120s)

table() {  # $1 supervisor pid: one row per daemon process, then the sum
    local p rows
    printf "%-8s %-34s %8s %8s %8s %8s\n" pid process PSS_kB PrivD_kB Anon_kB File_kB
    rows=$(for p in $1 $(tree "$1"); do
        awk -v p="$p" -v c="$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-34)" '
            /^Pss:/ {s=$2} /^Private_Dirty:/ {d=$2} /^Pss_Anon:/ {a=$2} /^Pss_File:/ {f=$2}
            END {printf "%-8s %-34s %8d %8d %8d %8d\n", p, c, s, d, a, f}' \
            "/proc/$p/smaps_rollup" 2>/dev/null || true
    done)
    echo "$rows"
    echo "$rows" | awk '{s += $(NF-3)} END {printf "sum PSS %.1f MiB\n", s / 1024}'
}
tree() {  # descendants that are not monitors (mem-pods.sh's rule), nor below them
    local c
    for c in $(pgrep -P "$1"); do
        [ "$(tr '\0' ' ' < "/proc/$c/cmdline" 2>/dev/null | awk '{print $1}')" = podvisor-conmon ] \
            && continue
        echo "$c"; tree "$c"
    done
}

"$KIT/podvisor-up.sh"
trap '"$KIT/podvisor-down.sh"' EXIT
pid=$(cat /run/harness-podvisor.pid)
"$KIT/crictl-parallel-pods.sh" "$EP" 10 1 | tail -1
"$KIT/crictl-parallel-pods.sh" "$EP" 50 1 | tail -1
sleep 65
echo "== idle after the bursts"
table "$pid"
(until [ "$("${C[@]}" ps -q --state running --name '^sleeper$' 2>/dev/null | wc -l)" -ge 10 ]; do
     sleep 0.3; done
 sleep 3; echo "== while mem-pods.sh's 10 pods run"; table "$pid") > /tmp/daemon_mem.$$ &
echo "== mem-pods.sh 10"
DAEMON_TREE=1 MONITOR_BY=cmdline "$KIT/mem-pods.sh" "$EP" "$pid" podvisor-conmon 10
wait
cat /tmp/daemon_mem.$$; rm -f /tmp/daemon_mem.$$
