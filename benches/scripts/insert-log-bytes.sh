#!/usr/bin/env bash
# Raft log bytes per inserted key and insert throughput of two `leakbloom` binaries, side by
# side: for each round, each binary in turn (the order alternates by round) runs three nodes
# (RF=3, 16 shards, snapshots off: `snapshot_entries` 10^12 and no log byte budget, so the
# data directories hold every entry) and a router on loopback ports 19351-19373, creates a set
# of 10 M keys at 1e-6, then inserts through the router in two shapes, 5 s each after a 1 s
# warm-up: `--batch 1000 --concurrency 4 --conns 2` and `--batch 4096 --concurrency 8 --conns 2`.
#
# Per shape it prints keys/s, p50 and p99 (the bench line), and bytes per key: the growth of
# the three data directories (`du -sb`, averaged over the nodes: each holds a replica of every
# shard) over the keys the router acknowledged meanwhile (its
# `leakbloom_router_keys_inserted_total`, warm-up included). Then the medians by binary and
# shape. Every process it started is stopped on exit.
#
# usage: benches/scripts/insert-log-bytes.sh OLD_BIN NEW_BIN [ROUNDS]   (default 3 rounds)
set -euo pipefail
OLD=$1
NEW=$2
ROUNDS=${3:-3}
ROUTER=127.0.0.1:19351
METRICS=127.0.0.1:19352
source "$(dirname "$0")/three-nodes.sh"
printf 'snapshot_entries = 1000000000000\nsnapshot_log_bytes = 0\n' >"$D/nodes.toml"
export LEAKBLOOM_CONFIG="$D/nodes.toml"

# router_keys: keys the router acknowledged so far.
router_keys() {
  curl -s "http://$METRICS/metrics" |
    awk '/^leakbloom_router_keys_inserted_total/ {s += $NF} END {printf "%.0f", s}'
}
# data_bytes DIR: bytes of the three data directories under DIR.
data_bytes() { du -sbc "$1"/n1 "$1"/n2 "$1"/n3 | awk '/total$/ {print $1}'; }
# field NAME LINE: the value of NAME= in a bench result line.
field() { sed -nE "s/.* $1=([^ ]+).*/\\1/p" <<<" $2"; }

# run NAME BIN ROUND: one cluster of BIN, both shapes; one result line per shape.
run() {
  local name=$1 bin=$2 round=$3 dir="$D/$1-$3" shape batch concurrency before keys line after
  mkdir -p "$dir"
  local first=${#pids[@]}
  start_nodes "$bin" "$dir" 19360 19370
  "$bin" router --listen "$ROUTER" --nodes 127.0.0.1:19361 --metrics-listen "$METRICS" \
    >"$dir/router.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 60); do grep -qs "shard map learned" "$dir/router.log" && break; sleep 1; done
  "$bin" sets create bytes --capacity 10000000 --fpr 1e-6 --addr "$ROUTER" >/dev/null
  for shape in 1000x4 4096x8; do
    batch=${shape%x*} concurrency=${shape#*x}
    before=$(data_bytes "$dir")
    keys=$(router_keys)
    line=$("$bin" bench e2e --addr "$ROUTER" --set bytes --mode insert --batch "$batch" \
      --concurrency "$concurrency" --conns 2 --seconds 5 --warmup 1 2>/dev/null)
    sleep 2 # followers catch up with the last acknowledged entries
    after=$(data_bytes "$dir")
    keys=$(($(router_keys) - keys))
    printf '%s round=%s shape=%s keys_per_s=%s p50_ms=%s p99_ms=%s keys=%s bytes_per_key=%s\n' \
      "$name" "$round" "$shape" "$(field keys_per_s "$line")" "$(field p50_ms "$line")" \
      "$(field p99_ms "$line")" "$keys" \
      "$(awk -v b=$((after - before)) -v k="$keys" 'BEGIN {printf "%.1f", b / 3 / k}')"
  done
  kill "${pids[@]:$first}" 2>/dev/null || true
  wait "${pids[@]:$first}" 2>/dev/null || true
  pids=("${pids[@]:0:$first}")
  rm -rf "$dir"
}

for round in $(seq "$ROUNDS"); do
  if ((round % 2)); then
    run old "$OLD" "$round"
    run new "$NEW" "$round"
  else
    run new "$NEW" "$round"
    run old "$OLD" "$round"
  fi
done | tee "$D/results"

echo "medians:"
for name in old new; do
  for shape in 1000x4 4096x8; do
    median() {
      grep "^$name .*shape=$shape " "$D/results" | sed -nE "s/.* $1=([^ ]+).*/\\1/p" | sort -g |
        awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
    }
    echo "$name shape=$shape keys_per_s=$(median keys_per_s) p50_ms=$(median p50_ms)" \
      "p99_ms=$(median p99_ms) bytes_per_key=$(median bytes_per_key)"
  done
done
