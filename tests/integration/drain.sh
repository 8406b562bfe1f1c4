#!/usr/bin/env bash
# `mesh nodes drain` (docs/protocol.md section 4.20, docs/operations.md "Draining a spore"): a
# drained spore is given no new task, the nexus takes back what it holds and has not started (it
# runs elsewhere), its running tasks finish there, and it stays connected. The drain is kept by
# the spore's key over a nexus restart and a spore restart, until `mesh nodes undrain`. Only an
# admin key may drain; an unknown spore is an error.
. "$(dirname "$0")/lib.sh"
up --spores 2 --slots 2
ms() { date +%s%3N; }
in_flight_of() { mesh nodes --json | grep "\"name\":\"$1\"" | grep -o '"in_flight":[0-9]*' | cut -d: -f2; }
state_of() { mesh nodes --json | grep "\"name\":\"$1\"" | grep -o '"state":"[a-z]*"' | cut -d'"' -f4; }
on_node_after() {  # on_node_after NODE MS BATCH: results of BATCH whose task was given to NODE after MS
  sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $3 AND r.node = '$1' AND r.assigned_ms > $2"
}

# 1. Mid-batch. As in spore_stop.sh: 40 tasks of 0 ms make the batch's average short, so its 20
# tasks of 2 s are sent out at once with a prefetch, and a spore queues those it cannot run yet.
batch=$({ printf '0\n%.0s' $(seq 40); printf '2000\n%.0s' $(seq 20); } | mesh submit --handler sleep --attempts 1 --lines -)
wait_until 20 "the 40 short tasks to end" at_least_done "$batch" 40
name=""
for s in spore-1 spore-2; do [ "$(in_flight_of "$s")" -ge 3 ] && { name=$s; break; }; done
[ -n "$name" ] || fail "no spore holds a queued task: in flight $(in_flight_of spore-1) and $(in_flight_of spore-2)"
other=spore-1
[ "$name" = spore-1 ] && other=spore-2
held=$(in_flight_of "$name")
drain_ms=$(ms)
expect_rc 0 mesh nodes drain "$name"
grep -q "^$name ([0-9a-f:]*) drained: it gets no new task; [0-9]* in flight, [0-9]* of them recalled" "$T/out" ||
  fail "drain said: $(cat "$T/out")"
recalled=$(sed 's/.*in flight, \([0-9]*\) of them recalled.*/\1/' "$T/out")
[ "$recalled" -ge 3 ] || fail "only $recalled tasks recalled from $name, which held $held"
[ "$(state_of "$name")" = draining ] || fail "mesh nodes shows $name $(state_of "$name"), not draining"
mesh nodes > "$T/nodes.txt"
grep -q "^$name .*(draining)" "$T/nodes.txt" || fail "mesh nodes (text) does not show $name draining: $(cat "$T/nodes.txt")"
# Its running tasks finish there; then it holds nothing: drained, still connected.
drained() { [ "$(state_of "$name")" = drained ]; }
wait_until 15 "$name to finish its running tasks and show drained" drained
expect_rc 0 timeout 60 mesh wait "$batch" --quiet
store_check "$batch" 60
[ "$(on_node_after "$name" "$drain_ms" "$batch")" -eq 0 ] || fail "$name was given tasks after its drain"
[ "$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch AND r.node = '$name'
          AND r.finished_ms > $drain_ms AND r.status = 0")" -ge 1 ] || fail "no running task finished on $name after the drain"
back=$(sql "SELECT COUNT(*) FROM attempts a JOIN tasks t ON t.id = a.task JOIN results r ON r.task = t.id
            WHERE t.batch = $batch AND a.outcome = 'recalled' AND a.node = '$name' AND a.node_lost = 0
            AND r.node = '$other' AND r.status = 0")
[ "$back" -ge 1 ] || fail "no task recalled from $name ran on $other"
[ "$back" -eq "$(counter tasks_handed_back)" ] || fail "$back recalled tasks ran elsewhere, tasks_handed_back=$(counter tasks_handed_back)"
[ "$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch AND r.status <> 0")" -eq 0 ] ||
  fail "a task failed (--attempts 1: a hand-back must not be charged)"
grep -q "node $name ([0-9a-f:]*) drained by" "$T/c/nexus.log" || fail "the nexus did not log the drain"
grep -q "recalled [0-9]* tasks from node $name (drained)" "$T/c/nexus.log" || fail "the nexus did not log the drain's recall"
[ "$(counter nodes_drained)" -eq 1 ] || fail "nodes_drained is $(counter nodes_drained)"
expect_rc 0 mesh nodes drain "$name"
grep -q "was already drained" "$T/out" || fail "a second drain said: $(cat "$T/out")"

# 2. A batch whose only eligible spores are drained waits, and `mesh task` says why.
expect_rc 0 mesh nodes drain "$other" --json
grep -q '"drained":true,"changed":true,"connected":true' "$T/out" || fail "drain --json said: $(cat "$T/out")"
waits=$(echo 1 | mesh submit --handler echo --lines - 2> "$T/submit.err")
grep -q "every live spore that can run handler 'echo' is drained" "$T/submit.err" ||
  fail "the submit did not warn that only drained spores can run it: $(cat "$T/submit.err")"
task=$(sql "SELECT id FROM tasks WHERE batch = $waits")
why() { mesh task "$task" > "$T/task.txt" && grep -q "drained" "$T/task.txt"; }
wait_until 10 "mesh task to say why the task waits" why
[ "$(done_count "$waits")" -eq 0 ] || fail "a task ran on a drained spore"
expect_rc 0 mesh nodes undrain "$other"
grep -q "^$other ([0-9a-f:]*) undrained: it is given tasks again" "$T/out" || fail "undrain said: $(cat "$T/out")"
expect_rc 0 timeout 20 mesh wait "$waits" --quiet
[ "$(sql "SELECT node FROM results WHERE task = $task")" = "$other" ] || fail "the waiting task did not run on $other"

# 3. The drain outlives a nexus restart (SIGKILL) and a spore restart.
short_batch() { printf '0\n%.0s' $(seq 30) | mesh submit --handler sleep --lines -; }
"$cluster" kill "$T/c" nexus
"$cluster" restart-nexus "$T/c"
both_back() { [ "$(mesh nodes --json | grep -c '"name"')" -eq 2 ]; }
wait_until 30 "both spores to rejoin the restarted nexus" both_back
[ "$(state_of "$name")" = drained ] || fail "after a nexus restart $name is $(state_of "$name")"
restart_ms=$(ms)
b2=$(short_batch)
expect_rc 0 timeout 30 mesh wait "$b2" --quiet
[ "$(on_node_after "$name" 0 "$b2")" -eq 0 ] || fail "$name got tasks after a nexus restart"
"$cluster" stop "$T/c" "$name"
# Stopped, it is no longer among the spores, but `mesh nodes --all` shows its key offline and
# drained, under the name and address it had.
! mesh nodes --json | grep -q "\"name\":\"$name\"" || fail "mesh nodes lists the stopped spore $name"
mesh nodes --all --json > "$T/all.json"
grep "\"name\":\"$name\"" "$T/all.json" | grep -q '"drained":true,"connected":false,"state":"offline"' ||
  fail "mesh nodes --all does not show $name offline and drained: $(cat "$T/all.json")"
mesh nodes --all > "$T/all.txt"
grep -q "^$name .*(offline, drained)" "$T/all.txt" || fail "mesh nodes --all (text): $(cat "$T/all.txt")"
[ "$(grep -c '"connected":true' "$T/all.json")" -eq 1 ] || fail "mesh nodes --all: $(cat "$T/all.json")"
"$cluster" add-spore "$T/c" "$name" > /dev/null
[ "$(state_of "$name")" = drained ] || fail "after its restart $name is $(state_of "$name")"
b3=$(short_batch)
expect_rc 0 timeout 30 mesh wait "$b3" --quiet
[ "$(on_node_after "$name" 0 "$b3")" -eq 0 ] || fail "$name got tasks after its restart"
store_check "$b2" 30
store_check "$b3" 30

# 4. Undrained: it gets work again.
expect_rc 0 mesh nodes undrain "$name"
[ "$(state_of "$name")" = active ] || fail "after undrain $name is $(state_of "$name")"
b4=$({ printf '300\n%.0s' $(seq 8); } | mesh submit --handler sleep --lines -)
expect_rc 0 timeout 30 mesh wait "$b4" --quiet
[ "$(on_node_after "$name" "$restart_ms" "$b4")" -ge 1 ] || fail "$name got no task after undrain"
[ "$(counter nodes_drained)" -eq 0 ] || fail "nodes_drained is $(counter nodes_drained) after undrain"

# 5. A client key may not drain; an unknown spore is an error; a bad call is a usage error.
mesh keys gen "$T/client.key" > /dev/null
mesh keys accept "$T/client.key.pub" --role client > /dev/null
expect_rc 1 env MESH_KEY="$T/client.key" mesh nodes drain "$name"
grep -q "needs an admin key" "$T/err" || fail "a client's drain got: $(cat "$T/err")"
[ "$(state_of "$name")" = active ] || fail "a client's drain changed $name"
expect_rc 1 mesh nodes drain no-such-spore
grep -q "no connected spore is named 'no-such-spore'" "$T/err" || fail "an unknown spore got: $(cat "$T/err")"
expect_rc 2 mesh nodes drain
expect_rc 2 mesh nodes drain a b
# A spore may call itself anything: one named like the start of another spore's fingerprint does
# not catch a drain meant for that key (refused as ambiguous), and a whole fingerprint always
# names its key, whatever a spore calls itself.
other_fp=$(mesh keys fingerprint "$T/c/$other/spore.key.pub")
alias=$(printf '%s' "$other_fp" | tr -d ':' | cut -c1-8)
"$cluster" add-spore "$T/c" "$alias" > /dev/null
expect_rc 1 mesh nodes drain "$alias"
grep -q "is the name of spore .* and the start of another node key's fingerprint" "$T/err" ||
  fail "a name that is also a fingerprint prefix got: $(cat "$T/err")"
[ "$(state_of "$alias")" = active ] && [ "$(state_of "$other")" = active ] || fail "an ambiguous drain changed a spore"
expect_rc 0 mesh nodes drain "$other_fp"
grep -q "^$other (" "$T/out" || fail "a whole fingerprint did not drain $other: $(cat "$T/out")"
[ "$(state_of "$alias")" = active ] || fail "a drain by fingerprint caught the spore named $alias"
expect_rc 0 mesh nodes undrain "$other_fp"
"$cluster" stop "$T/c" "$alias"

# 6. A drained spore whose key is revoked: no longer counted among the drained spores (none of
# its spores can connect), and it can still be undrained by its fingerprint.
fp=$(mesh keys fingerprint "$T/c/$name/spore.key.pub")
expect_rc 0 mesh nodes drain "$name"
[ "$(counter nodes_drained)" -eq 1 ] || fail "nodes_drained is $(counter nodes_drained) after the drain"
expect_rc 0 mesh keys revoke "$fp"
gone() { ! mesh nodes | grep -q "^$name "; }
wait_until 20 "$name to be shut out" gone
[ "$(counter nodes_drained)" -eq 0 ] || fail "a revoked key counts as drained: nodes_drained=$(counter nodes_drained)"
expect_rc 0 mesh nodes undrain "$fp"
[ "$(sql "SELECT COUNT(*) FROM keys WHERE drained_ms IS NOT NULL")" -eq 0 ] || fail "the revoked key's drain was not lifted"
note "recalled at the drain: $recalled, of which $back ran on $other; drains=$(counter drains) undrains=$(counter undrains)"
