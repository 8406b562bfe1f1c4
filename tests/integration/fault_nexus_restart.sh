#!/usr/bin/env bash
# SIGKILL the nexus mid-batch and restart it on the same data dir: the batch completes with
# exactly one result per task, and the client that was waiting finishes its `mesh wait` with 0.
. "$(dirname "$0")/lib.sh"
up --spores 2 --nexus-args "--heartbeat 300ms"
batch=$(printf '3\n%.0s' $(seq 4000) | mesh submit --handler sleep --lines -)
timeout 180 mesh wait "$batch" --quiet > "$T/wait.out" 2> "$T/wait.err" &
waiter=$!
extra_pids+=("$waiter")
wait_until 60 "800 tasks done" at_least_done "$batch" 800
"$cluster" kill "$T/c" nexus
before=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch")
[ "$before" -lt 4000 ] || fail "the batch finished before the nexus was killed"
"$cluster" restart-nexus "$T/c"
set +e
wait "$waiter"
rc=$?
set -e
[ "$rc" -eq 0 ] || fail "mesh wait exited $rc across the restart: $(cat "$T/wait.err")"
store_check "$batch" 4000
grep -q "recovered 1 unfinished batches" "$T/c/nexus.log" || fail "the nexus did not recover the batch"
# A task that ended while the nexus was down has no assign time; its timeline says why, and
# --json says null (not 0, which reads as 1970).
late=$(sql "SELECT r.task FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch AND r.assigned_ms = 0 LIMIT 1")
if [ -n "$late" ]; then
  mesh task "$late" > "$T/late"
  grep -q "assigned to .* before a nexus restart (time not recorded)" "$T/late" || fail "timeline of task $late: $(cat "$T/late")"
  ! grep -q '^-' "$T/late" || fail "timeline of task $late shows a time of '-': $(cat "$T/late")"
  mesh task "$late" --json > "$T/late.json"
  grep -q '"assigned_ms":null,"started_ms":[1-9]' "$T/late.json" || fail "--json of task $late: $(cat "$T/late.json")"
  ! grep -q '_ms":0[,}]' "$T/late.json" || fail "--json of task $late has a time of 0: $(cat "$T/late.json")"
fi
# After a start, task ids continue 4096 above the highest stored one: an id the killed nexus may
# have handed out to a task it dispatched before storing it is never reused.
last=$(sql "SELECT MAX(id) FROM tasks")
small=$(echo one | mesh submit --handler echo --lines - --wait)
first=$(sql "SELECT MIN(id) FROM tasks WHERE batch = $small")
[ "$first" -gt $((last + 4096)) ] || fail "task ids after the restart start at $first, not past $last + 4096"
[ "$(mesh results "$small" | cut -f3)" = one ] || fail "a batch after the restart is wrong"
note "$before results were durable at the kill; the rest ran after the restart"
