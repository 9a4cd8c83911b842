#!/usr/bin/env bash
# A long insert run cut into 10 s windows: does the write path stall as the Raft logs grow,
# snapshot and compact? Three `leakbloom node` processes (RF=3, 16 shards) and a `leakbloom
# router` on loopback ports 19251-19273, a set `windows` sized for KEYS keys (default 100 M) at
# 1e-6, then `leakbloom bench e2e --mode insert --batch 4096 --concurrency 8 --window-seconds 10`
# through the router long enough to send KEYS keys.
#
# How long: a first 10 s run (same shape, after a 1 s warm-up) measures the rate; the long run
# then lasts the rest of KEYS at that rate, rounded up to whole windows (at most the bench's
# 3600 s). If the rate falls during the long run, fewer than KEYS keys are sent: the keys
# actually sent are printed. The bench's key pool repeats (1 M distinct keys), so the set ends
# with about 1 M distinct keys; filter memory is fixed by the capacity anyway, and the Raft logs
# carry every key sent.
#
# Prints every window line, the bench line, then the worst and median window p99 and their
# ratio, the set's filter size (`memory_bytes` of `leakbloom sets get`: every shard's filter,
# one replica) and per node its data directory size (`du -sb`; each node holds a replica of
# every shard) and that size / the filter size. Every process it started is stopped on exit.
#
# usage: benches/scripts/insert-windows.sh [BIN] [KEYS]   (default: target/release/leakbloom 100000000)
set -euo pipefail
BIN=${1:-target/release/leakbloom}
KEYS=${2:-100000000}
ROUTER=127.0.0.1:19251
WINDOW=10
source "$(dirname "$0")/three-nodes.sh"
start_nodes "$BIN" "$D" 19260 19270
"$BIN" router --listen "$ROUTER" --nodes 127.0.0.1:19261 >"$D/router.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do grep -q "shard map learned" "$D/router.log" && break; sleep 1; done
"$BIN" sets create windows --capacity "$KEYS" --fpr 1e-6 --addr "$ROUTER" >/dev/null

# insert SECONDS WARMUP: one run of the shape; its result line on stdout, its stderr (the
# window lines as they come, measured_s) to the terminal and to $D/insert.err.
insert() {
  "$BIN" bench e2e --addr "$ROUTER" --set windows --mode insert --batch 4096 --concurrency 8 \
    --conns 2 --seconds "$1" --warmup "$2" --window-seconds "$WINDOW" 2>&1 >"$D/insert.out" |
    tee "$D/insert.err" >&2
  cat "$D/insert.out"
}
# field NAME LINE: the value of NAME= in a result line.
field() { sed -nE "s/.* $1=([^ ]+).*/\\1/p" <<<" $2"; }
# keys_sent LINE: keys in successful requests of the run (keys/s x measured seconds).
keys_sent() {
  local measured
  measured=$(sed -nE 's/.*measured_s=([0-9.]+).*/\1/p' "$D/insert.err")
  awk -v r="$(field keys_per_s "$1")" -v s="$measured" 'BEGIN {printf "%.0f", r * s}'
}

first=$(insert "$WINDOW" 1)
sent=$(keys_sent "$first")
rate=$(field keys_per_s "$first")
seconds=$(awk -v k="$KEYS" -v s="$sent" -v r="$rate" -v w="$WINDOW" \
  'BEGIN {t = (k - s) / r; t = w * int((t + w - 1) / w); if (t < w) t = w; if (t > 3600) t = 3600; print t}')
echo "first run: $sent keys at $rate keys/s; the long run lasts $seconds s" >&2
line=$(insert "$seconds" 0)
echo "$line"
sent=$((sent + $(keys_sent "$line")))

worst=$(field worst_window_p99_ms "$line")
median=$(field median_window_p99_ms "$line")
filter=$(sed -nE 's/.*memory_bytes=([0-9]+).*/\1/p' <<<"$("$BIN" sets get windows --addr "$ROUTER")")
echo
echo "keys sent: $sent (target $KEYS), in $((seconds + WINDOW)) s measured"
echo "window p99 (of ${WINDOW} s windows of the long run): worst $worst ms, median $median ms, \
worst/median $(awk -v w="$worst" -v m="$median" 'BEGIN {printf "%.2f", w / m}')"
echo "filter size (the set's memory_bytes, one replica): $filter bytes"
for i in 1 2 3; do
  size=$(du -sb "$D/n$i" | cut -f1)
  echo "node $i data directory: $size bytes, $(awk -v d="$size" -v f="$filter" 'BEGIN {printf "%.2f", d / f}') x the filter size"
done
