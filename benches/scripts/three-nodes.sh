# Sourced by the benchmark scripts: makes a scratch directory $D and an array `pids` of
# processes, both cleaned up on exit. start_nodes BIN DIR CLIENT PEER starts three
# `leakbloom node` processes (ids 1-3, RF=3, 16 shards, data in DIR/n1..n3, logs DIR/nI.log) with
# client ports CLIENT+1..+3 and peer ports PEER+1..+3 on 127.0.0.1, adds their pids to `pids`
# and waits until node 1 serves.
D=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT

start_nodes() {
  local bin=$1 dir=$2 client=$3 peer=$4 peers="" i
  for i in 1 2 3; do peers+="${peers:+,}$i=127.0.0.1:$((peer + i))"; done
  for i in 1 2 3; do
    "$bin" node --id $i --listen 127.0.0.1:$((client + i)) --peer-listen 127.0.0.1:$((peer + i)) \
      --peers "$peers" --data-dir "$dir/n$i" >"$dir/n$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 60); do grep -q "node serving" "$dir/n1.log" && return; sleep 1; done
  echo "node 1 did not start: $(tail -5 "$dir/n1.log")" >&2
  return 1
}
