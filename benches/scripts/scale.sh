#!/usr/bin/env bash
# Scaling from 3 nodes to 5 and back under continuous load: do clients see errors or stalls
# while replicas move, and how long does each step take to balance?
#
# Three `leakbloom node` processes (ids 1-3, bootstrapped with --peers, RF=3, 16 shards) and a
# `leakbloom router` (with --metrics-listen) on free loopback ports (asked of the kernel
# through python3), data directories under a scratch directory, a set `scale` of 50 M keys at
# 1e-6 (more than the insert bench sends in a run with the default PHASE, about 30 M keys from
# a pool of 1 M distinct ones; a shard's snapshot is then 15 MB, so a move takes a moment).
# Then two `leakbloom bench e2e` processes through the router for the whole run, side by side
# (one bench runs one mode): inserts (`--batch 1000 --concurrency 4`) and linearizable checks
# of the same keys (`--batch 1000 --concurrency 8`), both cut into WINDOW-second windows
# (`--window-seconds`; each window's line is stamped with the time it arrives). With the load
# running:
#   1. a quiet baseline of PHASE seconds;
#   2. node 4 joins (`leakbloom node --id 4 --join <node 1>`); wait until balanced;
#   3. node 5 joins; as soon as its log shows the leader of a shard placed on it reaching it
#      (the move has begun: it is a learner, receiving the shard's snapshot), it is killed with
#      SIGKILL, left down 5 s, restarted with the same command and data directory; wait until
#      balanced;
#   4. after PHASE seconds, node 5 then node 4 are decommissioned (`leakbloom nodes
#      decommission ID --wait`), stopped, and the script waits until balanced on 3 nodes;
#   5. after PHASE more seconds the benches are stopped.
# Balanced with N nodes: `leakbloom nodes list --json` (polled every 0.5 s) shows N active
# nodes whose replica counts are within one of each other and no replica on any other node.
# Those counts are the placement's: the planner commits it one step at a time and keeps at
# most 2 shards moving, so at "balanced" the last one or two moves may still be finishing.
#
# The benches run for at most an hour (`--seconds 3600`) and are stopped with SIGTERM once the
# story is over, so their own result line (and the first error's message, which they print only
# at the end) is lost: errors and p99 come from their window lines (the last, cut-short window
# is lost too; it falls in the quiet tail). The router's counters (calls by gRPC code, failed
# calls to nodes, retry rounds) tell what the errors were.
#
# Prints progress on stderr, then one line each: client-side errors; p99 of the windows during
# the moves against the baseline windows (a window counts as "moves" if it overlaps the time
# from a join or decommission to the following balance; baseline: windows that end before node
# 4 starts); time to balance after each step; the final replicas and leaders per node; the
# router's counters; WARN and ERROR lines in the nodes' logs. Every process it started is
# stopped on exit; with KEEP_LOGS=DIR the logs and window lines are copied to DIR first.
#
# usage: benches/scripts/scale.sh BIN [PHASE]   (default PHASE: 30 seconds)
set -euo pipefail
BIN=$1
PHASE=${2:-30}
WINDOW=2              # seconds per bench window: short enough to place a window in a step
BALANCE_TIMEOUT=600   # seconds a step may take to balance before the run is abandoned
SET=scale
export NO_COLOR=1     # logs without colour codes, so their fields can be grepped
D=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS" && cp "$D"/*.log "$D"/*.err "$D/events" "$KEEP_LOGS"/ 2>/dev/null || true
  fi
  rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Twelve free loopback ports: client and peer ports of nodes 1-5, the router and its metrics.
read -r -a free <<<"$(python3 -c 'import socket
s = [socket.socket() for _ in range(12)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')"
declare -A client peer node_pid
for i in 1 2 3 4 5; do
  client[$i]=127.0.0.1:${free[i - 1]}
  peer[$i]=127.0.0.1:${free[i + 4]}
done
ROUTER=127.0.0.1:${free[10]}
METRICS=127.0.0.1:${free[11]}
peers="1=${peer[1]},2=${peer[2]},3=${peer[3]}"

log() { echo "[$(date +%T)] $*" >&2; }
# mark NAME: records that NAME happens now, in $D/events and in the variable t_NAME.
mark() {
  printf -v "t_$1" '%s' "$EPOCHREALTIME"
  echo "$EPOCHREALTIME $1" >>"$D/events"
}
# span FROM TO: seconds from event FROM to event TO, one decimal.
span() {
  local from="t_$1" to="t_$2"
  awk -v a="${!from}" -v b="${!to}" 'BEGIN {printf "%.1f", b - a}'
}
# forget PID: PID ended and was waited for; the exit trap must not signal it.
forget() {
  local kept=() pid
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
}
# start_node I: starts node I (1-3 bootstrap, 4 and 5 join through node 1), log appended to
# $D/nI.log; the same command starts it again after a kill.
start_node() {
  local i=$1 args
  args=(node --id "$i" --listen "${client[$i]}" --peer-listen "${peer[$i]}" --data-dir "$D/n$i")
  if ((i <= 3)); then
    args+=(--peers "$peers" --shards 16 --replication 3)
  else
    args+=(--join "${client[1]}")
  fi
  "$BIN" "${args[@]}" >>"$D/n$i.log" 2>&1 &
  node_pid[$i]=$!
  pids+=($!)
}
# stop_node I [SIGNAL]: stops node I (SIGTERM unless told) and waits for it.
stop_node() {
  kill "-${2:-TERM}" "${node_pid[$1]}"
  wait "${node_pid[$1]}" 2>/dev/null || true
  forget "${node_pid[$1]}"
}
# wait_for FILE PATTERN WHAT: waits up to 60 s for PATTERN in FILE.
wait_for() {
  for _ in $(seq 120); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.5; done
  echo "$3 did not happen within 60 s: $(tail -5 "$1")" >&2
  return 1
}
nodes_json() { "$BIN" nodes list --json --addr "$ROUTER" 2>/dev/null; }
# balanced N: N active nodes with replica counts within one of each other, none on any other.
balanced() {
  nodes_json | jq -e --argjson n "$1" '
    [.[] | select(.state == "active") | .replicas] as $r
    | ($r | length) == $n and ($r | max) - ($r | min) <= 1
      and ([.[] | select(.state != "active") | .replicas] | add // 0) == 0' >/dev/null
}
# wait_balanced N: polls `balanced N` every 0.5 s, for at most BALANCE_TIMEOUT seconds.
wait_balanced() {
  local deadline=$((SECONDS + BALANCE_TIMEOUT))
  until balanced "$1"; do
    if ((SECONDS > deadline)); then
      echo "not balanced on $1 nodes after $BALANCE_TIMEOUT s:" >&2
      "$BIN" nodes list --addr "$ROUTER" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}
# stamp: each line of stdin prefixed with the time it arrived.
stamp() { while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }
# load MODE ARGS...: a bench e2e of MODE through the router for up to an hour, in the
# background; its stdout in $D/MODE.out, its stderr stamped in $D/MODE.err, pid in load_MODE.
load() {
  local mode=$1
  shift
  "$BIN" bench e2e --addr "$ROUTER" --set "$SET" --mode "$mode" --conns 2 --seconds 3600 \
    --warmup 1 --window-seconds "$WINDOW" "$@" >"$D/$mode.out" 2> >(stamp >"$D/$mode.err") &
  printf -v "load_$mode" '%s' "$!"
  pids+=($!)
}

log "nodes 1-3, router $ROUTER, data in $D"
for i in 1 2 3; do start_node "$i"; done
wait_for "$D/n1.log" "node serving" "node 1 serving"
"$BIN" router --listen "$ROUTER" --nodes "${client[1]}" --metrics-listen "$METRICS" \
  >"$D/router.log" 2>&1 &
pids+=($!)
wait_for "$D/router.log" "shard map learned" "the router learning the shard map"
"$BIN" sets create "$SET" --capacity 50000000 --fpr 1e-6 --addr "$ROUTER" >/dev/null
wait_balanced 3

load insert --batch 1000 --concurrency 4
load check --batch 1000 --concurrency 8 --consistency linearizable
wait_for "$D/insert.err" "window=0 " "the first insert window"
wait_for "$D/check.err" "window=0 " "the first check window"
log "load running; baseline for $PHASE s"
sleep "$PHASE"

log "node 4 joins"
mark join4
start_node 4
wait_balanced 4
mark balanced4
log "balanced on 4 nodes after $(span join4 balanced4) s"
sleep "$PHASE"

log "node 5 joins"
mark join5
start_node 5
deadline=$((SECONDS + BALANCE_TIMEOUT))
# A shard group (the catalog's id has 10 digits) whose leader node 5 has heard from.
until grep -qE "leadership changed group=[0-9]{1,9} node=5 role=Follower" "$D/n5.log"; do
  if ((SECONDS > deadline)); then echo "no replica placed on node 5" >&2; exit 1; fi
  sleep 0.1
done
placed=$(nodes_json | jq -r '.[] | select(.id == 5) | .replicas')
stop_node 5 KILL
mark kill5
log "node 5 killed (SIGKILL) $(span join5 kill5) s after it started, $placed replicas placed on it"
sleep 5
mark restart5
start_node 5
wait_balanced 5
mark balanced5
log "balanced on 5 nodes $(span restart5 balanced5) s after the restart" \
  "($(span join5 balanced5) s after the join)"
sleep "$PHASE"

mark decommission5
"$BIN" nodes decommission 5 --wait --addr "$ROUTER" >>"$D/decommission.log" 2>&1
mark decommissioned5
log "node 5 decommissioned after $(span decommission5 decommissioned5) s"
"$BIN" nodes decommission 4 --wait --addr "$ROUTER" >>"$D/decommission.log" 2>&1
mark decommissioned4
log "node 4 decommissioned after $(span decommissioned5 decommissioned4) s"
stop_node 5
stop_node 4
wait_balanced 3
mark balanced3
log "balanced on 3 nodes $(span decommission5 balanced3) s after decommission 5 began"
sleep "$PHASE"

for mode in insert check; do
  pid="load_$mode"
  if ! kill -0 "${!pid}" 2>/dev/null; then
    echo "bench e2e --mode $mode ended early: $(tail -5 "$D/$mode.err")" >&2
    exit 1
  fi
  kill "${!pid}"
  wait "${!pid}" 2>/dev/null || true
  forget "${!pid}"
done
sleep 0.5 # the stamp loops' last lines

# windows MODE: per window of bench MODE, "phase errors p99_ms": phase `baseline` (ends
# before node 4 starts), `moves` (overlaps a join or decommission until the following
# balance) or `other`. A window's start is estimated from the earliest-arriving line:
# t0 = min(arrival - (K + 1) x WINDOW); a line arrives once every request started in its
# window has finished, so later than its end.
windows() {
  awk -v w="$WINDOW" -v base="$t_join4" \
    -v moves="$t_join4 $t_balanced4 $t_join5 $t_balanced5 $t_decommission5 $t_balanced3" '
    / window=/ {
      k = $2; sub(/window=/, "", k); at[k] = $1; line[k] = $0
      s = $1 - (k + 1) * w; if (!seen++ || s < t0) t0 = s
    }
    END {
      n = split(moves, m, " ")
      for (k in at) {
        from = t0 + k * w; until = from + w; phase = "other"
        if (until <= base) phase = "baseline"
        for (i = 1; i < n; i += 2) if (from < m[i + 1] && until > m[i]) phase = "moves"
        e = line[k]; sub(/.* errors=/, "", e)
        p = line[k]; sub(/.* p99_ms=/, "", p); sub(/ .*/, "", p)
        print phase, e, p
      }
    }' "$D/$1.err"
}
# p99s MODE PHASE: "median M worst W ms over N windows" of the window p99s of a phase.
p99s() {
  windows "$1" | awk -v phase="$2" '$1 == phase && $3 != "nan" {print $3}' | sort -g |
    awk '{v[NR] = $1} END {
      if (NR == 0) print "no windows"
      else printf "median %s worst %s ms (%d windows)", v[int((NR + 1) / 2)], v[NR], NR }'
}
errors() { windows "$1" | awk '{e += $2; n++} END {printf "%d (in %d windows)", e, n}'; }
# router NAME: the router's samples of leakbloom_router_NAME ("{labels} value"; ...), or none.
router() {
  local samples
  samples=$(curl -s "http://$METRICS/metrics" | sed -n "s/^leakbloom_router_$1 *//p" | paste -sd';' -)
  echo "${samples:-none}" | sed 's/;/; /g'
}

echo
echo "client errors (bench e2e window lines): inserts $(errors insert), checks $(errors check)"
for mode in insert check; do
  echo "p99 of ${WINDOW} s windows, ${mode}s: during moves $(p99s "$mode" moves);" \
    "baseline $(p99s "$mode" baseline)"
done
echo "time to balance: join 4 $(span join4 balanced4) s;" \
  "join 5 $(span join5 balanced5) s (killed -9 after $(span join5 kill5) s with $placed replicas" \
  "placed on it, restarted 5 s later, balanced $(span restart5 balanced5) s after the restart);" \
  "decommission 5 $(span decommission5 decommissioned5) s," \
  "then 4 $(span decommissioned5 decommissioned4) s," \
  "balanced on 3 $(span decommission5 balanced3) s after decommission 5 began"
echo "final replicas (leaders) per node: $(nodes_json |
  jq -r '[.[] | "\(.id)=\(.replicas) (\(.leaders)) \(.state)"] | join(", ")')"
echo "router: calls $(router requests_total); failed calls to nodes" \
  "$(router node_failures_total); retry rounds $(router retries_total)"
# Log lines without timestamps and fields: "LEVEL target: message".
for i in 1 2 3 4 5; do
  sed -E 's/^[^ ]+ +//; s/ [a-z_]+=.*//' "$D/n$i.log" >"$D/n$i.messages"
  echo "node $i log: $(grep -cE '^(WARN|ERROR) ' "$D/n$i.messages" || true) WARN/ERROR lines" \
    "$(grep -E '^(WARN|ERROR) ' "$D/n$i.messages" | sort | uniq -c | sort -rn | head -3 |
      awk '{$1 = $1; printf "%s[%s]", sep, $0; sep = " "}')"
done
