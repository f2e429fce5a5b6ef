#!/bin/bash
# User and system CPU time per proxied request, otlp-mesh against nginx, under the same closed
# loop: each proxy alone on core 0, the generator (`otlp-mesh bench -c 50`) and the upstream
# (`otlp-mesh bench-upstream`) on core 1, the proxy's utime/stime read from /proc/PID/stat
# around ROUNDS alternating 8 s runs. Splits what `bench-compare` reports as one CPU figure.
# Needs nginx. Usage: bench/user-sys-per-request.sh [BIN] [ROUNDS]
set -u
cd "$(dirname "$0")/.."
BIN=${1:-target/release/otlp-mesh}
ROUNDS=${2:-2}
W=$(mktemp -d)
UP=127.0.0.1:29181 NGX=127.0.0.1:29182 MESH=127.0.0.1:29183 ADMIN=127.0.0.1:29184
taskset -c 1 "$BIN" bench-upstream --bind $UP --log-level warn >/dev/null 2>&1 &
UPID=$!
sed -e "s#{admin}#$ADMIN#; s#{listen}#$MESH#; s#{upstream}#$UP#" bench/configs/otlp-mesh.yaml >"$W/mesh.yaml"
sed -e "s#{dir}#$W#g; s#{upstream}#$UP#; s#{listen}#$NGX#" bench/configs/nginx.conf >"$W/nginx.conf"
taskset -c 0 "$BIN" run --config "$W/mesh.yaml" --workers 1 --log-level warn >/dev/null 2>&1 &
MPID=$!
taskset -c 0 nginx -c "$W/nginx.conf" -p "$W" >/dev/null 2>&1 &
NPID=$!
trap 'kill $MPID $NPID $UPID 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
sleep 1.5
# Warm-up: connections, pools, buffers.
for port in ${MESH##*:} ${NGX##*:}; do
  taskset -c 1 "$BIN" bench -c 50 -d 2s --warmup 0s "http://127.0.0.1:$port/" --log-level warn >/dev/null 2>&1
done
measure() { # NAME PID PORT
  local before after requests
  before=$(awk '{print $14, $15}' "/proc/$2/stat")
  requests=$(taskset -c 1 "$BIN" bench -c 50 -d 8s --warmup 0s "http://127.0.0.1:$3/" --json - --log-level warn 2>/dev/null |
    python3 -c "import json, sys; print(json.load(sys.stdin)['requests'])")
  after=$(awk '{print $14, $15}' "/proc/$2/stat")
  python3 - "$1" "$requests" $before $after "$(getconf CLK_TCK)" <<'PY'
import sys
name, n, u0, s0, u1, s1, hz = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
us = 1e6 / hz / n
u, s = (u1 - u0) * us, (s1 - s0) * us
print(f"{name:10} requests {n:8d}  user {u:5.2f}  sys {s:5.2f}  total {u + s:5.2f} µs/request")
PY
}
for _ in $(seq 1 "$ROUNDS"); do
  measure otlp-mesh $MPID ${MESH##*:}
  measure nginx $NPID ${NGX##*:}
done
