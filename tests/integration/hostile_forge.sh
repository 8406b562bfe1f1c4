#!/usr/bin/env bash
# An accepted node key cannot record results for tasks it was never given: results sent before
# a hello are refused ("hello first") and not processed; after a hello, results for tasks
# queued (that need a tag it lacks) or running on another spore are dropped and counted; nor
# can it hand them back as a stopping spore would (docs/protocol.md section 4.18), or as if it
# answered a recall (section 4.20).
. "$(dirname "$0")/lib.sh"
up --spores 1 --slots 2
node=$(awk '$1 == "node" { print $2 }' "$T/c/nexus/endpoints")
hc=$MESH_BUILD/tests/integration/hostile_client
# node_key NAME: a node key pair $T/NAME.key, accepted, for a hand-made node.
node_key() {
  mesh keys gen "$T/$1.key" > /dev/null
  mesh keys accept "$T/$1.key.pub" --role node > /dev/null
}
node_key forger
queued=$(seq 1 5 | mesh submit --handler echo --requires gpu --lines -)
running=$(printf '3000\n3000\n' | mesh submit --handler sleep --lines -)
ids() { sql "SELECT id FROM tasks WHERE batch = $1 ORDER BY id" | paste -sd, -; }
stored() { [ "$(sql 'SELECT COUNT(*) FROM tasks')" -eq 7 ]; }
wait_until 10 "the tasks to be stored" stored
both="$(ids "$queued"),$(ids "$running")"
# Without a hello.
expect_rc 0 timeout 30 "$hc" "$node" "$MESH_NEXUS_KEY" "$T/forger.key" "forge:$both" 0 0
grep -q '^error 7 hello first' "$T/out" || fail "forged results without a hello got '$(cat "$T/out")'"
wait_until 10 "the refused results to be counted" sh -c "[ \$(mesh status --json | grep -o '\"results_before_hello\":[0-9]*' | cut -d: -f2) -ge 1 ]"
# After a hello (the tasks are not in its running list, nor done).
expect_rc 0 timeout 30 "$hc" "$node" "$MESH_NEXUS_KEY" "$T/forger.key" "helloforge:forger:$both" 0 0
[ "$(head -1 "$T/out")" = welcome ] || fail "the forger's hello got '$(cat "$T/out")'"
wait_until 10 "7 results dropped as unassigned" sh -c "[ \$(mesh status --json | grep -o '\"results_unassigned\":[0-9]*' | cut -d: -f2) -ge 7 ]"
[ "$(counter bad_result_bundles)" -ge 7 ] || fail "the forged results' bundle names were not counted: $(counter bad_result_bundles)"
grep -q "ignored the bundle named by 7 results from node forger" "$T/c/nexus.log" || fail "the bad bundle names were not logged"
[ "$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $queued")" -eq 0 ] ||
  fail "a forged result was recorded: $(mesh results "$queued")"
# A node that "stops" and hands back tasks it was never given: nothing is re-queued (they run
# on spore-1), the malformed hand-back is counted, and its leave is taken.
node_key leaver
expect_rc 0 timeout 30 "$hc" "$node" "$MESH_NEXUS_KEY" "$T/leaver.key" "leave:leaver:$both" 0 0
[ "$(sed -n 2p "$T/out")" = leftAck ] || fail "the leaver's final leaving got '$(cat "$T/out")'"
[ "$(counter tasks_handed_back)" -eq 0 ] || fail "tasks another node runs were handed back by a stranger"
[ "$(counter bad_leaving)" -eq 1 ] || fail "the malformed leaving was not counted: bad_leaving=$(counter bad_leaving)"
[ "$(counter nodes_left)" -eq 1 ] || fail "the leaver's leave was not taken"
# Nor can it answer a recall it never got with tasks another spore holds: nothing is re-queued,
# each is counted, and a hand-back whose attempts do not match its ids is dropped and counted.
node_key returner
expect_rc 0 timeout 30 "$hc" "$node" "$MESH_NEXUS_KEY" "$T/returner.key" "handback:returner:$both" 0 1
[ "$(head -1 "$T/out")" = welcome ] || fail "the returner's hello got '$(cat "$T/out")'"
[ "$(counter handback_unheld)" -eq 7 ] || fail "7 tasks handed back by a stranger, handback_unheld=$(counter handback_unheld)"
[ "$(counter bad_handbacks)" -eq 1 ] || fail "the malformed hand-back was not counted: bad_handbacks=$(counter bad_handbacks)"
[ "$(counter tasks_handed_back)" -eq 0 ] || fail "tasks another node runs were re-queued by a stranger's hand-back"
[ "$(sql "SELECT COUNT(*) FROM attempts WHERE outcome = 'recalled'")" -eq 0 ] || fail "a stranger's hand-back ended an attempt"
expect_rc 0 timeout 60 mesh wait "$running"
expect_rc 0 mesh results "$running"
! grep -q FORGED "$T/out" || fail "a forged result was recorded: $(cat "$T/out")"
[ "$(grep -c $'\tok\t' "$T/out")" -eq 2 ] || fail "the running tasks did not finish ok: $(cat "$T/out")"
note "results_before_hello=$(counter results_before_hello) results_unassigned=$(counter results_unassigned)"
