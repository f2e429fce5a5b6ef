#!/bin/bash
# Idle RSS of otlp-mesh: five starts with bench/configs/otlp-mesh.yaml on core 0, the binary
# dropped from the page cache before each (posix_fadvise DONTNEED on a private copy, so that
# pages left by an earlier run do not count), VmRSS read 1.5 s after start. Prints the five
# readings in kB, sorted. Usage: bench/idle-rss.sh [BIN]
set -u
cd "$(dirname "$0")/.."
BIN=${1:-target/release/otlp-mesh}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cp "$BIN" "$W/otlp-mesh"
sed -e 's/{admin}/127.0.0.1:19978/; s/{listen}/127.0.0.1:19979/; s/{upstream}/127.0.0.1:19980/' \
  bench/configs/otlp-mesh.yaml >"$W/idle.yaml"
for _ in 1 2 3 4 5; do
  python3 -c "
import os
fd = os.open('$W/otlp-mesh', os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)"
  taskset -c 0 "$W/otlp-mesh" run -c "$W/idle.yaml" --workers 1 --log-level warn >/dev/null 2>&1 &
  P=$!
  sleep 1.5
  awk '/VmRSS/ {print $2}' "/proc/$P/status"
  kill $P
  wait $P 2>/dev/null
done | sort -n | paste -sd' '
