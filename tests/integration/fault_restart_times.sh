#!/usr/bin/env bash
# A task that ends on its spore while the nexus is down has no recorded assign time: the nexus
# that assigned it is gone. `mesh task` says so, and `mesh task --json` says "assigned_ms":null
# (it said 0, which reads as 1970). Made deterministic with one slot and priorities: after the
# restart the spore's slot goes to a high-priority task, and nothing is prefetched behind it (a
# long task), so the finished low-priority one is not sent out again before the spore reports
# it done.
. "$(dirname "$0")/lib.sh"
gate_handler "$T/h"
up --spores 1 --slots 1 --nexus-args "--heartbeat 300ms" --spore-args "--handlers $T/h"
task_of() { sql "SELECT id FROM tasks WHERE batch = $1 ORDER BY id LIMIT 1"; }
in_flight() { mesh nodes --json | grep -q "\"in_flight\":$1,"; }
ran() { [ -s "$1.ran" ] && ! kill -0 "$(cat "$1.ran")" 2>/dev/null; }
recorded() { [ "$(sql "SELECT COUNT(*) FROM results WHERE task = $1")" -eq 1 ]; }

low=$(echo "$T/go1" | mesh submit --handler gate --lines -)
lt=$(task_of "$low")
wait_until 20 "task $lt to run" in_flight 1
# Committed when the submit returns; not sent: the spore's only slot runs a long task (no
# prefetch behind it). After the restart the nexus gives that slot to one of these first.
high=$(printf '%s\n%s\n' "$T/go2" "$T/go2" | mesh submit --handler gate --priority 9 --lines -)
in_flight 1 || fail "set-up: a task was queued behind the long one: $(mesh nodes --json)"
"$cluster" kill "$T/c" nexus
touch "$T/go1"
wait_until 30 "task $lt to end on the spore" ran "$T/go1"
"$cluster" restart-nexus "$T/c"
wait_until 30 "the result of task $lt to be recorded" recorded "$lt"
[ "$(sql "SELECT assigned_ms FROM results WHERE task = $lt")" = 0 ] ||
  fail "set-up: task $lt was assigned again after the restart: $(sql "SELECT * FROM results WHERE task = $lt")"
mesh task "$lt" > "$T/text"
grep -q "attempt 1 assigned to spore-1 before a nexus restart (time not recorded)" "$T/text" || fail "mesh task $lt: $(cat "$T/text")"
mesh task "$lt" --json > "$T/json"
grep -q '"state":"ok",.*"finished_ms":[1-9][0-9]*,.*{"attempt":1,"node":"spore-1","assigned_ms":null,"started_ms":[1-9][0-9]*,"ended_ms":[1-9][0-9]*,"outcome":"ok"' "$T/json" ||
  fail "mesh task $lt --json: $(cat "$T/json")"
! grep -q '_ms":0[,}]' "$T/json" || fail "a time of 0: $(cat "$T/json")"
touch "$T/go2"
expect_rc 0 timeout 60 mesh wait "$low" --quiet
expect_rc 0 timeout 60 mesh wait "$high" --quiet
# An attempt that failed and was retried keeps the start its spore reported (schema 11), so
# `mesh task` shows when each attempt ran, not only the last.
f=$(echo boom | mesh submit --handler fail --attempts 2 --lines -)
expect_rc 1 timeout 30 mesh wait "$f" --quiet
ft=$(task_of "$f")
mesh task "$ft" --json > "$T/failed.json"
grep -q '{"attempt":1,"node":"spore-1","assigned_ms":[1-9][0-9]*,"started_ms":[1-9][0-9]*,"ended_ms":[1-9][0-9]*,"outcome":"failed"' "$T/failed.json" ||
  fail "mesh task $ft --json: the failed attempt has no start: $(cat "$T/failed.json")"
mesh task "$ft" > "$T/failed.txt"
[ "$(grep -c "attempt [12] started" "$T/failed.txt")" -eq 2 ] || fail "mesh task $ft: $(cat "$T/failed.txt")"
note "a task that ended while the nexus was down: assigned_ms null; a failed attempt's start kept"
