#!/usr/bin/env bash
# Direct client against the router, side by side in one run: three `leakbloom node` processes
# (RF=3, 16 shards) and a `leakbloom router` on loopback ports 19051-19063, a 10 M-key set at
# 1e-6 with 1 M keys in it, then `leakbloom bench e2e` for each shape (batch x in flight,
# any-replica and linearizable) through the router and with `--direct`, alternating, RUNS
# times each (default 3), 5 s each. Prints every bench line, then per shape the median keys/s
# of each path and their ratio (direct / router).
#
# usage: benches/scripts/direct-vs-router.sh [BIN] [RUNS]   (default: target/release/leakbloom 3)
set -euo pipefail
BIN=${1:-target/release/leakbloom}
RUNS=${2:-3}
source "$(dirname "$0")/three-nodes.sh"
start_nodes "$BIN" "$D" 19060 18960
"$BIN" router --listen 127.0.0.1:19051 --nodes 127.0.0.1:19061 >"$D/router.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do grep -q "shard map learned" "$D/router.log" && break; sleep 1; done
ROUTER=127.0.0.1:19051
NODE=127.0.0.1:19061
"$BIN" sets create bench --capacity 10000000 --fpr 1e-6 --addr "$ROUTER" >/dev/null
"$BIN" bench e2e --addr "$ROUTER" --set bench --mode insert --batch 10000 --concurrency 4 \
  --seconds 3 --warmup 0 >/dev/null 2>&1
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'; }
results="$D/results"
for shape in "1000 50 any" "1 50 any" "1000 50 linearizable" "1 50 linearizable"; do
  read -r batch inflight consistency <<<"$shape"
  for run in $(seq "$RUNS"); do
    for path in router direct; do
      if [ "$path" = router ]; then args=(--addr "$ROUTER"); else args=(--addr "$NODE" --direct); fi
      line=$("$BIN" bench e2e "${args[@]}" --set bench --consistency "$consistency" \
        --batch "$batch" --concurrency "$inflight" --conns 2 --seconds 5 --warmup 1 2>/dev/null)
      echo "$line"
      keys=$(sed -E 's/.*keys_per_s=([0-9]+).*/\1/' <<<"$line")
      echo "$batch $inflight $consistency $path $keys" >>"$results"
    done
  done
done
echo
echo "batch in_flight consistency router_keys_per_s direct_keys_per_s direct/router (medians of $RUNS)"
for shape in "1000 50 any" "1 50 any" "1000 50 linearizable" "1 50 linearizable"; do
  read -r batch inflight consistency <<<"$shape"
  r=$(awk -v b="$batch" -v c="$consistency" '$1==b && $3==c && $4=="router" {print $5}' "$results" | median)
  d=$(awk -v b="$batch" -v c="$consistency" '$1==b && $3==c && $4=="direct" {print $5}' "$results" | median)
  echo "$batch $inflight $consistency $r $d $(awk -v r="$r" -v d="$d" 'BEGIN {printf "%.2f", d / r}')"
done
