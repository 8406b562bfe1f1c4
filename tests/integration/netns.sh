#!/usr/bin/env bash
# Discovery and reconnection across real hosts, built on this machine with network namespaces:
#
#   $p-sw     a bridge: the LAN switch of 10.77.0.0/24
#   $p-nexus  10.77.0.1    nexus A, beaconing cluster $cluster; the mesh CLI runs here
#   $p-s1..3  10.77.0.11-13  spores started with no --nexus: they find A by its beacon
#   $p-other  10.77.0.5    nexus B: same cluster, another key (a second or rogue nexus)
#   $p-rt     10.77.0.254 and 10.78.0.1: a router to a second subnet, which broadcasts do not cross
#   $p-s4     10.78.0.2    a spore on that subnet, joining with --nexus tcp://10.77.0.1:7700
#
# It checks: (1) the beacon spores find nexus A and run a batch; (2) the routed spore joins with a
# seed; (3) nexus B's beacon (same cluster, unpinned key) is dropped by every spore, none joins B;
# (4) spore-2's link goes down for 10 s mid-batch: the nexus declares it lost, its tasks are
# re-queued and finished elsewhere; when the link is back, spore-2 rejoins and takes work again;
# every task has exactly one result.
#
# Every address lives inside these namespaces (the bridge too): nothing is added to the host's
# own network stack and no packet leaves them. Names carry a per-run prefix; the namespaces and
# every process in them go on any exit. Skips (77) only where namespaces cannot be created.
set -euo pipefail

skip() {
  echo "SKIP: netns test: $*"
  exit 77
}
[ "$EUID" -eq 0 ] || skip "creating network namespaces needs root (CI runs the tests as root)"
command -v ip > /dev/null 2>&1 || skip "no 'ip' command (Debian package iproute2)"
p=hm$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
if ! err=$(ip netns add "$p-probe" 2>&1); then
  case $err in
    *"not permitted"* | *"Permission denied"*) skip "cannot create network namespaces here: $err" ;;
    *) echo "FAIL: ip netns add $p-probe: $err" >&2; exit 1 ;;
  esac
fi
err=$(ip link add name "${p}a" netns "$p-probe" type veth peer name "${p}b" netns "$p-probe" 2>&1) || {
  ip netns del "$p-probe" 2> /dev/null || true
  case $err in
    *"not permitted"* | *"Permission denied"*) skip "cannot create veth links here: $err" ;;
    *) echo "FAIL: cannot create a veth pair: $err" >&2; exit 1 ;;
  esac
}
ip netns del "$p-probe"

# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

namespaces=()
teardown() {
  local ns pid round
  for round in TERM KILL; do
    for ns in "${namespaces[@]}"; do
      for pid in $(ip netns pids "$ns" 2> /dev/null); do kill "-$round" "$pid" 2> /dev/null || true; done
    done
    for _ in $(seq 50); do
      local left=0
      for ns in "${namespaces[@]}"; do [ -z "$(ip netns pids "$ns" 2> /dev/null)" ] || left=1; done
      [ $left -eq 1 ] || break
      sleep 0.1
    done
  done
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2> /dev/null || true; done
}
# lib.sh's cleanup (logs of a failed test, $T removed) runs last and keeps the exit status.
# shellcheck disable=SC2154  # rc is assigned in the trap itself
trap 'rc=$?; set +e; teardown; (exit $rc); cleanup' EXIT
trap 'exit 143' TERM INT HUP

sw=$p-sw nx=$p-nexus other=$p-other rt=$p-rt
s1=$p-s1 s2=$p-s2 s3=$p-s3 s4=$p-s4
cluster=it-$p
logs=$T/c  # lib.sh shows $T/c/*.log when the test fails
mkdir -p "$logs"

add_ns() {
  ip netns add "$1"
  namespaces+=("$1")
  ip -n "$1" link set lo up
  # No IPv6 chatter (router solicitations, DAD): only the traffic the test makes.
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
    2> /dev/null || true
}

# plug NS IFNAME ADDR/LEN: a veth from NS to a port of the bridge, with an address and broadcast.
plug() {
  ip link add name "$2" netns "$1" type veth peer name "${2}p" netns "$sw"
  ip -n "$sw" link set "${2}p" master "${p}br" up
  ip -n "$1" addr add "$3" brd + dev "$2"
  ip -n "$1" link set "$2" up
}

for ns in "$sw" "$nx" "$other" "$rt" "$s1" "$s2" "$s3" "$s4"; do add_ns "$ns"; done
ip -n "$sw" link add name "${p}br" type bridge
ip -n "$sw" link set "${p}br" up
plug "$nx" "${p}n" 10.77.0.1/24
plug "$other" "${p}x" 10.77.0.5/24
plug "$s1" "${p}1" 10.77.0.11/24
plug "$s2" "${p}2" 10.77.0.12/24
plug "$s3" "${p}3" 10.77.0.13/24
plug "$rt" "${p}r" 10.77.0.254/24
ip link add name "${p}4" netns "$s4" type veth peer name "${p}4r" netns "$rt"
ip -n "$rt" addr add 10.78.0.1/24 brd + dev "${p}4r"
ip -n "$rt" link set "${p}4r" up
ip -n "$s4" addr add 10.78.0.2/24 brd + dev "${p}4"
ip -n "$s4" link set "${p}4" up
ip netns exec "$rt" sysctl -qw net.ipv4.ip_forward=1
ip -n "$nx" route add 10.78.0.0/24 via 10.77.0.254
ip -n "$s4" route add 10.77.0.0/24 via 10.78.0.1
note "hosts: namespaces $p-*, LAN 10.77.0.0/24, routed subnet 10.78.0.0/24"

# start NAME NS CMD...: CMD in namespace NS, in the background, logging to $logs/NAME.log.
start() {
  local name=$1 ns=$2
  shift 2
  ip netns exec "$ns" "$@" >> "$logs/$name.log" 2>&1 &
  extra_pids+=($!)
}

export MESH_NEXUS=tcp://10.77.0.1:7701 MESH_NEXUS_KEY=$T/nexus-a/nexus.key.pub
export MESH_KEY=$T/operator.key MESH_DATA_DIR=$T/nexus-a
mesh() { ip netns exec "$nx" "$bin/mesh" "$@"; }
mesh_b() {
  ip netns exec "$other" env MESH_NEXUS=tcp://10.77.0.5:7701 MESH_NEXUS_KEY="$T/nexus-b/nexus.key.pub" \
    MESH_DATA_DIR="$T/nexus-b" "$bin/mesh" "$@"
}
# wait_done BATCH: `mesh wait` with a deadline; the batch must end with every task ok.
wait_done() { expect_rc 0 timeout 60 ip netns exec "$nx" "$bin/mesh" wait "$1"; }
node_line() { mesh nodes --json --timeout 3s | grep "\"name\":\"$1\""; }
# field NAME KEY: one field of spore NAME in `mesh nodes --json` (quotes removed).
field() { node_line "$1" | grep -o "\"$2\":[^,}]*" | cut -d: -f2- | tr -d '"'; }
joined() { node_line "$1" > /dev/null; }
gone() {
  local out
  out=$(mesh nodes --json --timeout 3s) || return 1
  ! grep -q "\"name\":\"$1\"" <<< "$out"
}
busy() { [ "$(field "$1" in_flight)" -gt 0 ]; }
worked() { [ "$(field "$1" tasks_done)" -gt 0 ]; }
# sleep_batch COUNT MS: submits COUNT sleep tasks of MS milliseconds, prints the batch id.
sleep_batch() { seq 1 "$1" | sed "s/.*/$2/" | mesh submit --handler sleep --lines -; }
# each_once BATCH COUNT: `mesh results` lists indexes 0..COUNT-1 once each, every one ok.
each_once() {
  mesh results "$1" --json > "$T/results-$1" || fail "mesh results $1 failed (a task did not succeed?)"
  grep -o '"index":[0-9]*' "$T/results-$1" | cut -d: -f2 | sort -n | cmp -s - <(seq 0 $(($2 - 1))) ||
    fail "batch $1: the results do not list each of its $2 indexes exactly once"
  [ "$(grep -c '"status":"ok"' "$T/results-$1")" -eq "$2" ] || fail "batch $1: not every task is ok"
}
nexus_sql() { sqlite3 -readonly -cmd ".timeout 5000" "$T/nexus-a/nexus.db" "$1"; }

# ---- the nexuses: B first, so its beacon is already on the wire when the spores listen ----------
start nexus-b "$other" "$bin/nexus" --data-dir "$T/nexus-b" --name nexus-b --beacon --cluster "$cluster"
start nexus-a "$nx" "$bin/nexus" --data-dir "$T/nexus-a" --name nexus-a --beacon --cluster "$cluster"
wait_until 15 "nexus B to beacon" grep -q "beacon for cluster '$cluster'" "$logs/nexus-b.log"
wait_until 15 "nexus A to beacon" grep -q "beacon for cluster '$cluster'" "$logs/nexus-a.log"
cmp -s "$T/nexus-a/nexus.key.pub" "$T/nexus-b/nexus.key.pub" && fail "the two nexuses share a key"
"$bin/mesh" keys gen "$T/operator.key" > /dev/null
for d in nexus-a nexus-b; do
  "$bin/mesh" keys accept "$T/operator.key.pub" --role admin --comment operator --data-dir "$T/$d" > /dev/null
done
for i in 1 2 3 4; do
  mkdir -p "$T/s$i"
  "$bin/mesh" keys gen "$T/s$i/spore.key" > /dev/null
  # Accepted by both nexuses: only the pinned key keeps the spores away from B, not a refusal.
  for d in nexus-a nexus-b; do
    "$bin/mesh" keys accept "$T/s$i/spore.key.pub" --role node --comment "spore-$i" --data-dir "$T/$d" > /dev/null
  done
done

# ---- (1) spores with no address find nexus A by its beacon -------------------------------------
for i in 1 2 3; do
  ns_var=s$i
  start "spore-$i" "${!ns_var}" "$bin/spore" --data-dir "$T/s$i" --nexus-key "$T/nexus-a/nexus.key.pub" \
    --name "spore-$i" --slots 2 --cluster "$cluster"
done
# ---- (2) the spore on the routed subnet joins with a seed ---------------------------------------
start spore-4 "$s4" "$bin/spore" --data-dir "$T/s4" --nexus tcp://10.77.0.1:7700 \
  --nexus-key "$T/nexus-a/nexus.key.pub" --name spore-4 --slots 2
for i in 1 2 3 4; do wait_until 30 "spore-$i to join nexus A" joined "spore-$i"; done
for i in 1 2 3; do
  [ "$(field "spore-$i" found_by)" = beacon ] || fail "spore-$i was not found by beacon: $(node_line "spore-$i")"
  [ "$(field "spore-$i" address)" = "10.77.0.1$i" ] || fail "spore-$i has the wrong address: $(node_line "spore-$i")"
  grep -q "beacon: nexus of cluster '$cluster' at tcp://10.77.0.1:7700" "$logs/spore-$i.log" ||
    fail "spore-$i did not log the beacon it followed"
done
[ "$(field spore-4 found_by)" = seed ] || fail "spore-4 was not joined by seed: $(node_line spore-4)"
[ "$(field spore-4 address)" = 10.78.0.2 ] || fail "spore-4 did not come through the router: $(node_line spore-4)"
batch=$(sleep_batch 40 50)
wait_done "$batch"
each_once "$batch" 40
for i in 1 2 3 4; do grep -q "\"node\":\"spore-$i\"" "$T/results-$batch" || fail "spore-$i ran no task of the batch"; done
note "(1) 3 spores found nexus A by beacon, (2) spore-4 joined across the router by seed; 40 tasks ran on all 4"

# ---- (3) a beacon with another nexus key (same cluster) is ignored ------------------------------
for i in 1 2 3; do
  wait_until 10 "spore-$i to drop nexus B's beacon" \
    grep -q "beacon from 10.77.0.5:[0-9]* dropped: nexus key [0-9a-f]* of cluster '$cluster' is not the pinned one" \
    "$logs/spore-$i.log"
  grep -q "at tcp://10.77.0.5" "$logs/spore-$i.log" && fail "spore-$i acted on nexus B's beacon"
done
[ "$(mesh_b nodes --json --timeout 5s | grep -c '"name"')" -eq 0 ] ||
  fail "spores joined nexus B: $(mesh_b nodes --json --timeout 5s)"
grep -q "joined" "$logs/nexus-b.log" && fail "nexus B logged a join: $(grep joined "$logs/nexus-b.log")"
[ "$(mesh nodes --json | grep -c '"name"')" -eq 4 ] || fail "nexus A does not list exactly 4 spores: $(mesh nodes)"
note "(3) nexus B's beacon was dropped by all 3 spores; B has no spores, A has 4"

# ---- (4) spore-2's link goes down for 10 s mid-batch ---------------------------------------------
total=300
batch=$(sleep_batch $total 150)
wait_until 20 "spore-2 to have tasks in flight" busy spore-2
down_ns=$(date +%s%N)
ip -n "$s2" link set "${p}2" down
note "spore-2's link is down with $(field spore-2 in_flight 2> /dev/null || echo '?') tasks assigned to it"
wait_until 15 "the nexus to declare spore-2 lost" gone spore-2
[ "$(counter tasks_requeued)" -gt 0 ] || fail "no task was re-queued after spore-2 was lost"
left_ms=$((10000 - ($(date +%s%N) - down_ns) / 1000000))
[ $left_ms -le 0 ] || sleep "$((left_ms / 1000)).$(printf %03d $((left_ms % 1000)))"  # the outage itself
ip -n "$s2" link set "${p}2" up
note "spore-2's link is up again"
wait_done "$batch"
each_once "$batch" $total
wait_until 45 "spore-2 to rejoin" joined spore-2
grep -q "silent for" "$logs/spore-2.log" || fail "spore-2 never noticed the nexus went silent"
[ "$(grep -c "welcomed by nexus" "$logs/spore-2.log")" -ge 2 ] || fail "spore-2 was not welcomed again"
[ "$(field spore-2 found_by)" = beacon ] || fail "spore-2 rejoined, not by beacon: $(node_line spore-2)"
# It takes work again: a batch with more tasks than the free credit of all 4 spores reaches each.
again=$(sleep_batch 32 100)
wait_done "$again"
each_once "$again" 32
grep -q '"node":"spore-2"' "$T/results-$again" || fail "spore-2 rejoined but took no task"
wait_until 10 "spore-2 to count its tasks" worked spore-2
# Exactly one result per task in the store, and the tasks lost with spore-2 finished elsewhere.
if command -v sqlite3 > /dev/null 2>&1; then
  for b in "$batch" "$again"; do
    want=$(nexus_sql "SELECT COUNT(*) FROM tasks WHERE batch = $b")
    got=$(nexus_sql "SELECT COUNT(*), COUNT(DISTINCT t.idx), SUM(r.status = 0) FROM tasks t JOIN results r ON r.task = t.id WHERE t.batch = $b")
    [ "$got" = "$want|$want|$want" ] || fail "batch $b in the store: $want tasks, results (all, distinct, ok) = $got"
  done
  lost=$(nexus_sql "SELECT COUNT(DISTINCT a.task) FROM attempts a JOIN tasks t ON t.id = a.task WHERE t.batch = $batch AND a.node = 'spore-2' AND a.node_lost = 1")
  [ "$lost" -gt 0 ] || fail "no attempt of batch $batch is recorded as lost with spore-2"
  here=$(nexus_sql "SELECT COUNT(*) FROM attempts a JOIN results r ON r.task = a.task JOIN tasks t ON t.id = a.task WHERE t.batch = $batch AND a.node = 'spore-2' AND a.node_lost = 1 AND r.node = 'spore-2'")
  [ "$here" -eq 0 ] || fail "$here tasks lost with spore-2 have their result from spore-2"
else
  lost=$(grep -c '"attempts":[2-9]' "$T/results-$batch" || true)
  [ "$lost" -gt 0 ] || fail "no task of batch $batch needed a second attempt after spore-2 was lost"
fi
note "(4) $lost tasks lost with spore-2 finished elsewhere; spore-2 rejoined and took work; each task has one result"
