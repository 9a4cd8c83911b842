#!/usr/bin/env bash
# Healthy any-replica check latency through a router, and how many parts it hedges: three
# `leakbloom node` processes (RF=3, 16 shards) and a `leakbloom router` with `--hedge-ms MS`
# (0: no hedging) on loopback ports 17061-18090, a 10 M-key set, then `leakbloom bench e2e`
# at six shapes (batch x in flight: 1x1, 1x50, 1000x1, 1000x16, 65536x1, 65536x4), 5 s each.
# Prints the bench lines, then the router's hedge and retry counters.
#
# usage: benches/scripts/router-latency.sh [BIN] [MS]   (default: target/release/leakbloom 10)
set -euo pipefail
BIN=${1:-target/release/leakbloom}
HEDGE=${2:-10}
source "$(dirname "$0")/three-nodes.sh"
start_nodes "$BIN" "$D" 18060 17060
"$BIN" router --listen 127.0.0.1:18051 --nodes 127.0.0.1:18061 --metrics-listen 127.0.0.1:18090 \
  --hedge-ms "$HEDGE" >"$D/router.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do grep -q "shard map learned" "$D/router.log" && break; sleep 1; done
export LEAKBLOOM_ADDR=127.0.0.1:18051
"$BIN" sets create bench --capacity 10000000 --fpr 1e-6 >/dev/null
"$BIN" bench e2e --set bench --mode insert --batch 10000 --concurrency 4 --seconds 3 --warmup 0 \
  >/dev/null 2>&1
for shape in "1 1" "1 50" "1000 1" "1000 16" "65536 1" "65536 4"; do
  read -r batch inflight <<<"$shape"
  "$BIN" bench e2e --set bench --consistency any --batch "$batch" --concurrency "$inflight" \
    --conns $((inflight < 2 ? inflight : 2)) --seconds 5 --warmup 1 2>/dev/null
done
curl -s 127.0.0.1:18090/metrics | grep -E "^leakbloom_router_(hedges|retries)_total"
