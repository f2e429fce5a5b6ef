#!/usr/bin/env bash
# Side-by-side: direct upstream, otlp-mesh and nginx as reverse proxies, one worker each, HTTP/1.1
# keep-alive to the same upstream, measured in one run with wrk.
#
# Cores: the proxy under test runs alone on core 0; wrk and the upstream share core 1.
# Needs: nginx, wrk (apt-get install nginx-light wrk) and a release build of otlp-mesh.
# Usage: bench/compare-nginx.sh [duration_seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-50}
BIN=${OTLP_MESH_BIN:-target/release/otlp-mesh}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.3; rm -rf "$WORK"' EXIT
command -v nginx >/dev/null && command -v wrk >/dev/null || { echo "needs nginx and wrk" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

UP=127.0.0.1:18081 NGX=127.0.0.1:18082 MESH=127.0.0.1:18083 ADMIN=127.0.0.1:18084
nginx_conf() { # $1 = server block body
  cat <<CONF
worker_processes 1;
daemon off;
master_process off;
error_log $WORK/error.log error;
pid $WORK/nginx-\$\$.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server $UP; keepalive 64; }
  $1
}
CONF
}
nginx_conf "server { listen $UP; location / { return 200 'hello from upstream\n'; } }" | sed "s#nginx-\$\$.pid#up.pid#" > "$WORK/up.conf"
nginx_conf "server { listen $NGX; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" | sed "s#nginx-\$\$.pid#ngx.pid#" > "$WORK/ngx.conf"
cat > "$WORK/mesh.yaml" <<YAML
admin: { bind: $ADMIN }
listeners:
  - name: edge
    bind: $MESH
    request_id: false
    x_forwarded_for: false
    routes: [ { match: { path_prefix: / }, cluster: up } ]
clusters:
  - { name: up, discovery: { static: [ $UP ] } }
YAML

taskset -c 1 nginx -p "$WORK" -c "$WORK/up.conf" &
taskset -c 0 nginx -p "$WORK" -c "$WORK/ngx.conf" &
NGX_PID=$!
taskset -c 0 "$BIN" --log-level warn run --config "$WORK/mesh.yaml" --workers 1 &
MESH_PID=$!
for _ in $(seq 50); do curl -sf "http://$ADMIN/ready" >/dev/null && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)

printf "%-10s %12s %10s %10s %10s %14s %10s\n" target req/s p50 p99 max cpu-us/req rss-KiB
run() { # name addr pid
  local name=$1 addr=$2 pid=${3:-}
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://$addr/" >/dev/null # warm-up
  local before=0; [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  local out; out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "http://$addr/")
  local after=0; [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  local rps p50 p99 max reqs cpu rss
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  max=$(awk '/Latency/ && !/Distribution/ {print $4; exit}' <<<"$out")
  if [ -n "$pid" ]; then
    cpu=$(awk -v a="$after" -v b="$before" -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", (a-b)/hz*1e6/n}')
    rss=$(rss_kib "$pid")
  else cpu=-; rss=-; fi
  printf "%-10s %12s %10s %10s %10s %14s %10s\n" "$name" "$rps" "$p50" "$p99" "$max" "$cpu" "$rss"
}
run direct "$UP"
run nginx "$NGX" "$NGX_PID"
run otlp-mesh "$MESH" "$MESH_PID"
