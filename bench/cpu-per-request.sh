#!/bin/bash
# CPU time per proxied request of otlp-mesh under a config, for comparing configs (e.g. with
# and without telemetry) more finely than `bench-compare`: the proxy alone on core 0 with
# `--workers 1`, the generator (`otlp-mesh bench -c 50`, closed loop) and the upstream on core 1;
# CPU from /proc/PID/task/*/schedstat (nanoseconds, all threads) over SECONDS of load after a
# 2 s warm-up, requests from the proxy's own counter. Alternate configs run after run: on a VM
# the speed can drift by more than the difference being measured.
# CONFIG is a concrete copy of a bench/configs/otlp-mesh*.yaml with listener 127.0.0.1:29080,
# admin 127.0.0.1:29901 and upstream 127.0.0.1:29081 (as for callgrind-ir-per-request.sh).
# Usage: bench/cpu-per-request.sh BIN CONFIG [SECONDS]
set -u
BIN=$1; CFG=$2; S=${3:-5}
taskset -c 1 "$BIN" bench-upstream --bind 127.0.0.1:29081 --log-level warn >/dev/null 2>&1 &
UP=$!
taskset -c 0 "$BIN" run --config "$CFG" --workers 1 --log-level warn >/dev/null 2>&1 &
PX=$!
trap 'kill $PX $UP 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 1 60); do curl -s -o /dev/null http://127.0.0.1:29901/ready && break; sleep 0.2; done
taskset -c 1 "$BIN" bench -c 50 -d 2s --warmup 0s http://127.0.0.1:29080/ --log-level warn >/dev/null 2>&1
count() {
  curl -s http://127.0.0.1:29901/metrics | grep '^otlp_mesh_requests_total{listener="edge"' |
    awk '{s+=$NF} END {printf "%.0f", s}'
}
cpu_ns() { cat /proc/$PX/task/*/schedstat | awk '{s+=$1} END {printf "%.0f", s}'; }
taskset -c 1 "$BIN" bench -c 50 -d $((S + 2))s --warmup 0s http://127.0.0.1:29080/ --log-level warn >/dev/null 2>&1 &
LOAD=$!
sleep 1
N0=$(count); C0=$(cpu_ns)
sleep "$S"
N1=$(count); C1=$(cpu_ns)
wait $LOAD
N=$((N1 - N0))
echo "$(basename "$CFG") req/s $((N / S)) cpu-ns/req $(((C1 - C0) / N))"
