#!/bin/bash
# Instructions per proxied request under callgrind (stable on a busy machine, unlike wall-clock
# figures). Usage: [RATE=300] bench/callgrind-ir-per-request.sh BIN CONFIG TAG [DURATION]
# The load runs open loop at RATE requests/s (default 300, which the proxy sustains under
# valgrind) so that timer and idle work per request is the same in every run.
# CONFIG is a concrete copy of bench/configs/otlp-mesh.yaml or otlp-mesh-telemetry.yaml with
# listener 127.0.0.1:29080, admin 127.0.0.1:29901 and upstream 127.0.0.1:29081.
# Prints the proxy's Ir per request over the measured window, with the embedded store's
# ingest (everything under `Store::ingest_slice`, on the proxy's thread) counted apart: under
# valgrind the proxy handles ~1-2k req/s, below the store's 2 000 items/s budget, so the store
# indexes every span there, unlike at full speed where the budget makes it skip most batches.
# (Builds before the ingest became a task ran it on a thread of its own, `otlp-mesh-store`;
# a thread file that mentions the ingest is then counted as the store's.)
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
FILES=("$OUT/cg.$TAG.out".1-*)
for f in "${FILES[@]}"; do
  t=$(grep -m1 '^totals:' "$f" | awk '{print $2}'); ALL=$((ALL + t))
  if [ ${#FILES[@]} -gt 1 ] && grep -q 'store::Store::ingest' "$f"; then STORE=$((STORE + t)); fi
done
if [ ${#FILES[@]} -eq 1 ]; then
  # Inclusive cost of the ingest's slices (the figure's thousands separators removed).
  STORE=$(callgrind_annotate --inclusive=yes "${FILES[0]}" 2>/dev/null |
    grep -m1 'Store::ingest_slice' | awk '{gsub(",", "", $1); print $1 + 0}')
  STORE=${STORE:-0}
fi
N=$((AFTER - BEFORE))
echo "$TAG requests=$N Ir/request: proxy=$(((ALL - STORE) / N)) store=$((STORE / N))"
