#!/usr/bin/env bash
# Disk use under max-batch inserts: three `leakbloom node` processes (RF=3, 16 shards, fsync)
# on loopback ports 17161-18163, a set of CAPACITY keys at 1e-6, then `leakbloom bench e2e
# --mode insert --batch 65536 --concurrency 4` against node 1 for SECONDS while a loop prints
# every data directory's `du -sb` each 2 s. Prints the filters' size a node (GetSet's
# memory_bytes), the samples, the peak per node and the bench line.
#
# usage: benches/scripts/disk-bound.sh [BIN] [SECONDS] [CAPACITY]
#        (default: target/release/leakbloom 60 10000000)
set -euo pipefail
BIN=${1:-target/release/leakbloom}
SECONDS_=${2:-60}
CAPACITY=${3:-10000000}
source "$(dirname "$0")/three-nodes.sh"
start_nodes "$BIN" "$D" 18160 17160
export LEAKBLOOM_ADDR=127.0.0.1:18161
"$BIN" sets create bench --capacity "$CAPACITY" --fpr 1e-6 >/dev/null
echo "filters a node: $("$BIN" sets list | grep -o 'memory[^ ]*' || true)"
"$BIN" sets list
( while sleep 2; do echo "du $(date +%s) $(du -sb "$D"/n1 "$D"/n2 "$D"/n3 | cut -f1 | xargs)"; done ) &
pids+=($!)
"$BIN" bench e2e --set bench --mode insert --batch 65536 --concurrency 4 --seconds "$SECONDS_" \
  --warmup 0 2>/dev/null
sleep 4
echo "after: $(du -sb "$D"/n1 "$D"/n2 "$D"/n3 | cut -f1 | xargs)"
