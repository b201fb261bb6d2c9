#!/bin/bash
# worker_steps.sh [PODVISOR] - what the runtime and image workers keep, step
# by step: idle, after a pull, with 10 sequential pods running, after their
# removal, after a 50-pod and a 10-pod burst (crictl-parallel-pods.sh), and
# 15 s later. At each step: PSS, private dirty and anon PSS (smaps_rollup)
# and the thread count of both workers, and a copy of their smaps in $OUT
# (default /tmp/worker-steps) named <step>-<pool>.smaps, for
#     .venv/bin/python bench/worker_heap.py --smaps OUT/idle-runtime.smaps OUT/settled-runtime.smaps
# PROBE=1 also starts the daemon with PODVISOR_MEMPROBE=$OUT (workers/memprobe.py)
# and sends each worker SIGUSR2 at each step: heap dumps for bench/worker_heap.py.
# The harness podvisor (the kit's podvisor-up.sh) is used: take the kit's lock.
#
#     flock -o /tmp/critest.lock bench/worker_steps.sh [PODVISOR]
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
KIT=$HERE/../shared/conformance
EP=unix:///run/podvisor-harness/podvisor.sock
IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
C=(crictl --runtime-endpoint "$EP" --image-endpoint "$EP" --timeout 120s)
OUT=${OUT:-/tmp/worker-steps}
export PODVISOR=${1:-$HERE/.venv/bin/podvisor}
rm -rf "$OUT"; mkdir -p "$OUT"
[ -z "${PROBE:-}" ] || export PODVISOR_MEMPROBE=$OUT
WORK=$(mktemp -d /tmp/worker-steps.XXXXXX)

"$KIT/podvisor-up.sh"
trap '"$KIT/podvisor-down.sh"; rm -rf "$WORK"' EXIT
pid=$(cat /run/harness-podvisor.pid)

step() {  # $1: the step's name
    local c pool
    echo "== $1"
    for c in $(pgrep -P "$pid"); do
        pool=$(tr '\0' ' ' < "/proc/$c/cmdline" 2>/dev/null | awk '$1 == "podvisor:" {print $2}')
        case $pool in runtime|image) ;; *) continue ;; esac
        [ -z "${PROBE:-}" ] || kill -USR2 "$c"
        cp "/proc/$c/smaps" "$OUT/$1-$pool.smaps"
        awk -v c="$c" -v p="$pool" -v t="$(ls "/proc/$c/task" | wc -l)" '
            /^Pss:/ {s=$2} /^Private_Dirty:/ {d=$2} /^Pss_Anon:/ {a=$2}
            END {printf "%-8s %-8s PSS %6d kB  private dirty %6d kB  anon %6d kB  threads %d\n", c, p, s, d, a, t}' \
            "/proc/$c/smaps_rollup"
    done
}

sleep 3; step idle
"${C[@]}" pull "$IMAGE" >/dev/null
sleep 2; step after-pull
cat > "$WORK/ctr.json" <<JSON
{ "metadata": { "name": "sleeper" }, "image": { "image": "$IMAGE" }, "command": [ "sleep", "3600" ] }
JSON
for i in $(seq 1 10); do
    cat > "$WORK/p$i.json" <<JSON
{ "metadata": { "name": "steps-$i", "namespace": "steps", "uid": "steps-$i", "attempt": 0 }, "linux": {} }
JSON
    pod=$("${C[@]}" runp "$WORK/p$i.json")
    ctr=$("${C[@]}" create "$pod" "$WORK/ctr.json" "$WORK/p$i.json")
    "${C[@]}" start "$ctr" >/dev/null
done
sleep 3; step seq10-running
for pod in $("${C[@]}" pods -q --namespace steps); do
    "${C[@]}" stopp "$pod" >/dev/null; "${C[@]}" rmp "$pod" >/dev/null
done
sleep 3; step seq10-removed
"$KIT/crictl-parallel-pods.sh" "$EP" 50 1 | tail -1
sleep 3; step burst50-removed
"$KIT/crictl-parallel-pods.sh" "$EP" 10 1 | tail -1
sleep 3; step burst10-removed
sleep 15; step settled
