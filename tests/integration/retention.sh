#!/usr/bin/env bash
# Retention (--keep-finished): a nexus keeping finished batches for 3 s removes the tasks,
# results and attempts of older ones (a map-reduce job's batches once the job ended), keeps each
# batch row marked with expired_ms and its final counts, never touches a running batch, says
# what happened in `mesh results|wait|status|task` (exit 6 for results and task), and keeps it
# so across a restart, without handing out the removed task ids again.
. "$(dirname "$0")/lib.sh"
up --spores 2 --nexus-args "--keep-finished 3s"
ok=$(printf 'a\nb\nc\n' | mesh submit --handler echo --lines - --wait)
set +e
bad=$(printf 'x\ny\n' | mesh submit --handler fail --attempts 2 --lines - --wait 2> "$T/bad.err")
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "a failing batch's submit --wait exited $rc: $(cat "$T/bad.err")"
printf 'one two\ntwo\n' > "$T/in"
expect_rc 0 timeout 60 mesh mapreduce --mapper echo --reducer echo --reducers 2 --output "$T/mr" "$T/in"
map=$(sql "SELECT id FROM batches WHERE mr_stage = 1")
reduce=$(sql "SELECT next_batch FROM batches WHERE id = $map")
[ -n "$reduce" ] || fail "the job has no reduce stage"
# A batch that runs past the keep duration: never touched.
running=$(printf '60000\n60000\n' | mesh submit --handler sleep --lines -)  # ms
task_ok=$(sql "SELECT MIN(id) FROM tasks WHERE batch = $ok")
task_max=$(sql "SELECT MAX(id) FROM tasks")
[ "$(sql "SELECT COUNT(*) FROM attempts a JOIN tasks t ON t.id = a.task WHERE t.batch = $bad")" -ge 1 ] ||
  fail "the failing batch recorded no attempts"

expired() { [ "$(sql "SELECT COUNT(*) FROM batches WHERE expired_ms IS NOT NULL AND purging = 0")" -ge "$1" ]; }
wait_until 30 "four batches expired" expired 4
for b in "$ok" "$bad" "$map" "$reduce"; do
  [ "$(sql "SELECT COUNT(*) FROM tasks WHERE batch = $b")" -eq 0 ] || fail "batch $b still has task rows"
  [ "$(sql "SELECT expired_ms > finished_ms FROM batches WHERE id = $b")" -eq 1 ] || fail "batch $b is not marked expired"
done
[ "$(sql "SELECT COUNT(*) FROM results")" -eq 0 ] || fail "results of expired batches remain"
[ "$(sql "SELECT COUNT(*) FROM attempts")" -eq 0 ] || fail "attempts of expired batches remain"
[ "$(sql "SELECT kept_succeeded || ',' || kept_failed FROM batches WHERE id = $ok")" = "3,0" ] || fail "batch $ok lost its counts"
[ "$(sql "SELECT kept_succeeded || ',' || kept_failed FROM batches WHERE id = $bad")" = "0,2" ] || fail "batch $bad lost its counts"
[ "$(sql "SELECT COUNT(*) FROM tasks WHERE batch = $running")" -eq 2 ] || fail "the running batch lost tasks"
[ -z "$(sql "SELECT expired_ms FROM batches WHERE id = $running")" ] || fail "the running batch was marked expired"
[ "$(counter batches_expired)" -eq 4 ] || fail "batches_expired is $(counter batches_expired), expected 4"
[ "$(counter tasks_expired)" -ge 5 ] || fail "tasks_expired is $(counter tasks_expired)"
grep -q "removed [0-9]* tasks .* of [0-9]* batches finished more than 3s ago (--keep-finished)" "$T/c/nexus.log" ||
  fail "no log line for the expiry pass"

check_cli() {
  expect_rc 6 mesh results "$ok"
  grep -q "batch $ok finished at .*; its tasks and results were removed at .* (the nexus keeps finished batches for --keep-finished 3s)" "$T/err" ||
    fail "mesh results of an expired batch: $(cat "$T/err")"
  [ ! -s "$T/out" ] || fail "mesh results of an expired batch printed rows"
  expect_rc 0 mesh wait "$ok"
  grep -q "its tasks and results were removed" "$T/err" || fail "mesh wait of an expired batch: $(cat "$T/err")"
  expect_rc 1 mesh wait "$bad" --json
  grep -q '"state":"expired"' "$T/out" || fail "mesh wait --json: $(cat "$T/out")"
  grep -q '"failed":2' "$T/out" || fail "mesh wait --json lost the counts: $(cat "$T/out")"
  expect_rc 0 mesh wait "$map" --quiet  # follows the job into its (expired) reduce stage
  expect_rc 6 mesh task "$task_ok"
  grep -q "task $task_ok was in batch $ok finished at" "$T/err" || fail "mesh task of an expired task: $(cat "$T/err")"
  expect_rc 0 mesh status
  grep -Eq "^$ok .* expired\$" "$T/out" || fail "mesh status does not show batch $ok expired: $(cat "$T/out")"
  grep -Eq "^$running .* running\$" "$T/out" || fail "mesh status does not show batch $running running: $(cat "$T/out")"
  expect_rc 0 mesh status --json
  grep -q "{\"batch\":$reduce,[^}]*\"state\":\"expired\"" "$T/out" || fail "mesh status --json: $(cat "$T/out")"
}
check_cli

# After a restart: still expired, the running batch recovered, and no removed task id reused.
"$cluster" stop "$T/c" nexus
# Its last words say what it leaves behind, and that it is kept.
grep -q "stopping with 0 tasks queued and 2 running on 2 spores: they are in nexus.db and resume" "$T/c/nexus.log" ||
  fail "no summary at the stop: $(tail -3 "$T/c/nexus.log")"
"$cluster" restart-nexus "$T/c"
check_cli
[ "$(sql "SELECT COUNT(*) FROM tasks WHERE batch = $running")" -eq 2 ] || fail "the running batch lost tasks at the restart"
spores_back() { mesh status --json | grep -q '"nodes_alive":2'; }
wait_until 60 "the spores to reconnect" spores_back
new=$(echo again | mesh submit --handler echo --lines - --wait)
first=$(sql "SELECT MIN(id) FROM tasks WHERE batch = $new")
[ "$first" -gt "$task_max" ] || fail "task id $first was handed out again (the highest before was $task_max)"
[ "$(mesh results "$new" | cut -f3)" = again ] || fail "a batch after the restart is wrong"
note "expired: $ok $bad $map $reduce; running: $running"
