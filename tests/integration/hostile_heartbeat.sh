#!/usr/bin/env bash
# Heartbeats whose load is NaN, infinite or negative: the load is ignored and counted, the beat
# still keeps the node alive, and `mesh nodes --json` stays valid JSON (it once printed nan).
. "$(dirname "$0")/lib.sh"
up --spores 1
node=$(awk '$1 == "node" { print $2 }' "$T/c/nexus/endpoints")
hc=$MESH_BUILD/tests/integration/hostile_client
# beater VALUE BEATS: a node "beatVALUE" with its own accepted key sends BEATS heartbeats of VALUE.
beater() {
  mesh keys gen "$T/beat$1.key" > /dev/null
  mesh keys accept "$T/beat$1.key.pub" --role node > /dev/null
  timeout 60 "$hc" "$node" "$MESH_NEXUS_KEY" "$T/beat$1.key" "beat:beat$1:$1" 0 "$2" > "$T/beat$1.out" &
  extra_pids+=($!)
}
for v in nan inf -5; do beater "$v" 8; done
bad_at_least() { [ "$(counter bad_heartbeats)" -ge "$1" ]; }
wait_until 20 "bad heartbeats to be counted" bad_at_least 6
all_listed() { [ "$(mesh nodes --json | grep -c '"name":"beat')" -eq 3 ]; }
wait_until 10 "the three nodes to be listed" all_listed
mesh nodes --json > "$T/nodes.json"
python3 -c '
import json, math, sys
for line in open(sys.argv[1]):
    n = json.loads(line)  # "nan" is not JSON: this fails on it
    for k in ("cpu_pct", "mem_pct", "score"):
        v = n[k]
        assert v is None or (math.isfinite(v) and v >= 0), (n["name"], k, v)
' "$T/nodes.json" || fail "mesh nodes --json is not valid JSON with finite loads: $(cat "$T/nodes.json")"
grep -q 'ignored the load of a heartbeat from node beat' "$T/c/nexus.log" || fail "the bad heartbeats were not logged"
batch=$(seq 1 100 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 30 mesh wait "$batch"
# Starts of tasks it does not run: each dropped and counted; more than a spore may send in one
# beat: the list dropped whole (and counted as a bad heartbeat), the beat still counts.
before=$(counter bad_heartbeats)
for v in starts10 starts5000; do beater "$v" 3; done
unheld_at_least() { [ "$(counter starts_unheld)" -ge "$1" ]; }
wait_until 20 "foreign starts to be counted" unheld_at_least 10
wait_until 20 "the oversized start lists to be refused" grep -q "ignored the 5000 starts of a heartbeat from node beatstarts5000 (at most 4096)" "$T/c/nexus.log"
[ "$(counter bad_heartbeats)" -gt "$before" ] || fail "the oversized start list was not counted"
[ $(( $(counter starts_unheld) % 10 )) -eq 0 ] || fail "starts of the oversized lists were looked at: starts_unheld $(counter starts_unheld)"
batch=$(seq 1 100 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 30 mesh wait "$batch"
note "bad_heartbeats=$(counter bad_heartbeats)"
