#!/bin/bash
# Instructions per proxied request under callgrind (stable on a busy machine, unlike wall-clock
# figures). Usage: [RATE=300] bench/callgrind-ir-per-request.sh BIN CONFIG TAG [DURATION]
# The load runs open loop at RATE requests/s (default 300, which the proxy sustains under
# valgrind) so that timer and idle work per request is the same in every run.
# CONFIG is a concrete copy of bench/configs/otlp-mesh.yaml or otlp-mesh-telemetry.yaml with
# listener 127.0.0.1:29080, admin 127.0.0.1:29901 and upstream 127.0.0.1:29081.
# Prints the proxy's Ir per request over the measured window, with the embedded store's
# ingest thread (`otlp-mesh-store`) counted apart: under valgrind the proxy handles ~1-2k req/s,
# below the store's 2 000 items/s budget, so the store indexes every span there, unlike at
# full speed where the budget makes it skip most batches.
set -u
BIN=$1; CFG=$2; TAG=$3; DUR=${4:-10s}
RATE=${RATE:-300}
OUT=${OUT:-/tmp/cg}
mkdir -p "$OUT"
$BIN bench-upstream --bind 127.0.0.1:29081 --log-level warn >/dev/null 2>&1 &
UP=$!
valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
  --callgrind-out-file="$OUT/cg.$TAG.out" \
  $BIN run --config "$CFG" --workers 1 --log-level warn >"$OUT/proxy.$TAG.log" 2>&1 &
PX=$!
for _ in $(seq 1 120); do curl -s -o /dev/null http://127.0.0.1:29901/ready && break; sleep 0.5; done
# Warm-up (connections, pools, buffers), not measured.
$BIN bench -c 10 -d 3s --warmup 0s http://127.0.0.1:29080/ --log-level warn >/dev/null 2>&1
sleep 1
count() {
  curl -s http://127.0.0.1:29901/metrics | grep '^otlp_mesh_requests_total{listener="edge"' |
    awk '{s+=$NF} END {print s}'
}
BEFORE=$(count)
callgrind_control -i on $PX >/dev/null 2>&1
$BIN bench -c 10 -d "$DUR" --rate "$RATE" --warmup 0s http://127.0.0.1:29080/ --log-level warn >"$OUT/bench.$TAG.txt" 2>&1
callgrind_control -d $PX >/dev/null 2>&1
AFTER=$(count)
kill $PX; wait $PX 2>/dev/null
kill $UP; wait $UP 2>/dev/null
ALL=0; STORE=0
for f in "$OUT/cg.$TAG.out".1-*; do
  t=$(grep -m1 '^totals:' "$f" | awk '{print $2}'); ALL=$((ALL + t))
  if grep -q 'store::Store::ingest' "$f"; then STORE=$((STORE + t)); fi
done
N=$((AFTER - BEFORE))
echo "$TAG requests=$N Ir/request: proxy=$(((ALL - STORE) / N)) store=$((STORE / N))"
