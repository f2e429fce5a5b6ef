#!/bin/bash
# User-space instructions and system calls per proxied request: otlp-mesh against nginx and
# haproxy (those installed), under the same open-loop load. Unlike wall-clock CPU time, both
# counts barely move from run to run on a busy or throttled VM, so they can rank proxies where
# `bench-compare` rounds cannot. They are not CPU time: kernel work per call and instructions
# per cycle differ between programs, so they support, not replace, the `bench-compare` figures.
#
# Each proxy runs with its `bench/configs/` config (one worker, keep-alive upstream), first
# under `valgrind --tool=callgrind` (instrumentation switched on after a warm-up, so start-up
# is not counted), then under `strace -c -f` for the system calls. The load each time is
# `otlp-mesh bench -c 10 --rate RATE` (open loop: the same wake-ups per request for every
# proxy; 300 req/s is sustained by every proxy under valgrind); requests are those the
# generator completed. The upstream is `otlp-mesh bench-upstream`.
# Usage: bench/callgrind-vs-peers.sh [BIN] [RATE] [SECONDS]
set -u
cd "$(dirname "$0")/.."
BIN=${1:-target/release/otlp-mesh}
RATE=${2:-300}
S=${3:-10}
for tool in valgrind callgrind_control strace curl python3; do
  command -v $tool >/dev/null || { echo "needs $tool (apt-get install valgrind strace curl python3)" >&2; exit 1; }
done
W=$(mktemp -d)
UP=127.0.0.1:29281 LISTEN=127.0.0.1:29280 ADMIN=127.0.0.1:29282
"$BIN" bench-upstream --bind $UP --log-level warn >/dev/null 2>&1 &
UPID=$!
PX=
trap 'kill $PX $UPID 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
fill() { sed -e "s#{dir}#$W#g; s#{admin}#$ADMIN#; s#{listen}#$LISTEN#; s#{upstream}#$UP#" "$1"; }
fill bench/configs/otlp-mesh.yaml >"$W/otlp-mesh.yaml"
fill bench/configs/nginx.conf >"$W/nginx.conf"
fill bench/configs/haproxy.cfg >"$W/haproxy.cfg"

command_for() { # NAME -> the proxy's command line, in the foreground, one worker
  case $1 in
    otlp-mesh) echo "$BIN run --config $W/otlp-mesh.yaml --workers 1 --log-level warn" ;;
    nginx) echo "nginx -c $W/nginx.conf -p $W" ;;
    haproxy) echo "haproxy -db -f $W/haproxy.cfg" ;;
  esac
}

wait_listening() {
  for _ in $(seq 1 120); do
    curl -s -o /dev/null "http://$LISTEN/" && return 0
    sleep 0.5
  done
  echo "proxy did not come up" >&2
  return 1
}

load() { # JSON-FILE: one measured run; prints the requests completed
  "$BIN" bench -c 10 -d "${S}s" --rate "$RATE" --warmup 0s "http://$LISTEN/" --log-level warn \
    --json "$1" >/dev/null 2>&1
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ok'])" "$1"
}

instructions() { # NAME -> Ir per request
  local out=$W/cg.$1.out total=0 n t
  # shellcheck disable=SC2046
  valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
    --callgrind-out-file="$out" $(command_for "$1") >"$W/$1.vg.log" 2>&1 &
  PX=$!
  wait_listening || return 1
  "$BIN" bench -c 10 -d 3s --warmup 0s "http://$LISTEN/" --log-level warn >/dev/null 2>&1
  sleep 1
  callgrind_control -i on $PX >/dev/null 2>&1
  n=$(load "$W/$1.cg.json")
  callgrind_control -d $PX >/dev/null 2>&1
  kill $PX
  wait $PX 2>/dev/null
  for f in "$out".1*; do
    t=$(grep -m1 '^totals:' "$f" | awk '{print $2}')
    total=$((total + ${t:-0}))
  done
  echo $((total / n))
}

syscalls() { # NAME -> system calls per request, and the most frequent ones
  # shellcheck disable=SC2046
  $(command_for "$1") >/dev/null 2>&1 &
  PX=$!
  wait_listening || return 1
  "$BIN" bench -c 10 -d 2s --warmup 0s "http://$LISTEN/" --log-level warn >/dev/null 2>&1
  strace -c -f -p $PX -o "$W/$1.strace" 2>/dev/null &
  local st=$! n
  sleep 0.5
  n=$(load "$W/$1.st.json")
  kill -INT $st
  wait $st 2>/dev/null
  kill $PX
  wait $PX 2>/dev/null
  # strace -c rows: % time, seconds, usecs/call, calls, [errors], name; sorted by time, so
  # the top calls are re-sorted by count.
  awk -v n="$n" '$1 ~ /^[0-9.]+$/ { if ($NF == "total") t = $4; else print $4, $NF }
    END { print t, "TOTAL" }' "$W/$1.strace" | sort -rn | awk -v n="$n" '
    $2 == "TOTAL" { total = $1; next }
    NR <= 6 { top = top sprintf(" %s %.2f", $2, $1 / n) }
    END { printf "%.2f (%s )", total / n, top }'
}

printf '%-10s %14s %s\n' proxy Ir/request "syscalls/request (top calls)"
for name in otlp-mesh nginx haproxy; do
  if [ $name != otlp-mesh ] && ! command -v $name >/dev/null; then
    printf '%-10s skipped (not installed)\n' $name
    continue
  fi
  ir=$(instructions $name)
  sc=$(syscalls $name)
  printf '%-10s %14s %s\n' $name "$ir" "$sc"
done
