#!/usr/bin/env bash
# Retention across a crash: the nexus is SIGKILLed while its writer removes a big expired batch
# (--keep-finished 1s; the removal goes in steps of 1,000 tasks, one transaction each). Checked
# at the kill, in a run that keeps everything (--keep-finished 0: the half-removed batch stays
# as the kill left it) and while and after a run with the keep again resumes the removal: the
# batch reads expired with its final counts in the store and in `mesh status|wait`, `mesh
# results|task` say expired (exit 6) however far the removal got, it ends with no task, result
# or attempt row of the batch left, an unfinished batch is untouched, no task id is handed out
# again and the counters add up. The kill lands where it lands: a round whose kill missed the
# removal (before it began or after it ended) still checks all of that, and the test tries
# again, at most three rounds, to land one in the middle.
. "$(dirname "$0")/lib.sh"
n=40000
keep_args="--keep-finished 1s --heartbeat 300ms"
up --spores 2 --nexus-args "$keep_args"
# A batch that never finishes (no spore has the tag; not sleep tasks, behind which a spore holds
# the echo tasks sent to it): never touched.
waiting=$(printf 'x\ny\n' | mesh submit --handler echo --requires nowhere --lines - 2> /dev/null)

nexus_pid() { pid_of nexus; }
ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -q -- "$T/c"; }
spores_back() { mesh status --json | grep -q '"nodes_alive":2'; }
# restart_with ARGS: starts the nexus again (it is stopped) with these options.
restart_with() {
  echo "$1" > "$T/c/nexus-args"  # what scripts/cluster.sh restart-nexus starts it with
  "$cluster" restart-nexus "$T/c"
}
removed() { [ "$(sql "SELECT purging FROM batches WHERE id = $1")" = 0 ] && [ "$(sql "SELECT COUNT(*) FROM tasks WHERE batch = $1")" -eq 0 ]; }

# check_reads B: what the nexus says of B, an expired batch of $n echo tasks, at any point of
# its removal.
check_reads() {
  local b=$1 left
  expect_rc 0 mesh wait "$b" --json
  grep -q '"state":"expired"' "$T/out" || fail "mesh wait --json of batch $b: $(cat "$T/out")"
  grep -q "\"succeeded\":$n,\"failed\":0," "$T/out" || fail "mesh wait --json of batch $b, counts: $(cat "$T/out")"
  expect_rc 0 mesh status --json
  grep -Eq "\{\"batch\":$b,[^}]*\"succeeded\":$n,\"failed\":0,[^}]*\"state\":\"expired\"" "$T/out" ||
    fail "mesh status --json, batch $b: $(grep -o "{\"batch\":$b,[^}]*}" "$T/out")"
  expect_rc 6 mesh results "$b"
  [ ! -s "$T/out" ] || fail "mesh results of batch $b (being removed) printed $(wc -l < "$T/out") rows"
  grep -q "its tasks and results were removed" "$T/err" || fail "mesh results of batch $b: $(cat "$T/err")"
  expect_rc 6 mesh task "$first"
  left=$(sql "SELECT MAX(id) FROM tasks WHERE batch = $b")
  if [ -n "$left" ]; then  # a task whose row is still there: the same answer
    expect_rc 6 mesh task "$left"
    grep -q "task $left was in batch $b finished at" "$T/err" || fail "mesh task $left: $(cat "$T/err")"
  fi
}

# check_store B: the store's side of the same, at any point of the removal of B.
check_store() {
  local b=$1 tasks results
  [ "$(sql "SELECT kept_succeeded || ',' || kept_failed || ',' || kept_cancelled FROM batches WHERE id = $b")" = "$n,0,0" ] ||
    fail "batch $b keeps $(sql "SELECT kept_succeeded || ',' || kept_failed || ',' || kept_cancelled FROM batches WHERE id = $b"), not $n,0,0"
  [ "$(sql "SELECT first_task || ',' || last_task FROM batches WHERE id = $b")" = "$first,$last" ] || fail "batch $b lost its task range"
  tasks=$(sql "SELECT COUNT(*) FROM tasks WHERE batch = $b")
  results=$(sql "SELECT COUNT(*) FROM results WHERE task BETWEEN $first AND $last")
  [ "$results" -eq "$tasks" ] || fail "batch $b has $tasks task rows left but $results results"
  [ "$(sql "SELECT COUNT(*) FROM results r WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = r.task)")" -eq 0 ] ||
    fail "results of removed tasks remain"
  [ "$(sql "SELECT COUNT(*) FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = a.task)")" -eq 0 ] ||
    fail "attempts of removed tasks remain"
}

caught=0 mid_reads=0
for round in 1 2 3; do
  b=$(seq 1 $n | mesh submit --handler echo --lines - --wait)
  first=$(sql "SELECT MIN(id) FROM tasks WHERE batch = $b")
  last=$(sql "SELECT MAX(id) FROM tasks WHERE batch = $b")
  [ "$((last - first + 1))" -eq "$n" ] || fail "batch $b has task ids $first..$last for $n tasks"
  before_max=$(sql "SELECT MAX(id) FROM tasks")
  # Kill as soon as the removal began: a poll of one row, no pause between polls.
  pid=$(nexus_pid)
  deadline=$((SECONDS + 30))
  for ((i = 0; i < 20000; i++)); do
    [ "$(sql "SELECT expired_ms IS NOT NULL FROM batches WHERE id = $b")" = 1 ] && break
    [ $SECONDS -lt $deadline ] || fail "batch $b was not marked expired within 30 s"
  done
  kill -KILL "$pid"
  "$cluster" kill "$T/c" nexus  # returns once it is gone
  ! ours "$pid" || fail "the nexus survived SIGKILL"
  marked=$(sql "SELECT expired_ms IS NOT NULL FROM batches WHERE id = $b")
  left=$(sql "SELECT COUNT(*) FROM tasks WHERE batch = $b")
  purging=$(sql "SELECT purging FROM batches WHERE id = $b")
  note "round $round: killed with batch $b marked=$marked purging=$purging and $left of $n task rows left"
  if [ "$marked" = 1 ]; then
    check_store "$b"
    if [ "$purging" = 1 ]; then
      [ "$left" -gt 0 ] && [ "$left" -lt "$n" ] && caught=1
    else
      [ "$left" -eq 0 ] || fail "batch $b is no longer being removed but has $left task rows"
    fi
  else
    [ "$left" -eq "$n" ] || fail "batch $b is not marked but lost task rows ($left of $n left)"
  fi

  # A run that keeps everything: reads of the batch as the kill left it.
  restart_with "--keep-finished 0 --heartbeat 300ms"
  if [ "$marked" = 1 ]; then
    check_reads "$b"
    check_store "$b"
  else
    expect_rc 0 mesh wait "$b" --json
    grep -q "\"succeeded\":$n,\"failed\":0," "$T/out" || fail "mesh wait --json of batch $b: $(cat "$T/out")"
  fi
  "$cluster" stop "$T/c" nexus

  # The keep again: the removal resumes (or begins) and ends; reads agree all along.
  restart_with "$keep_args"
  reads=0
  deadline=$((SECONDS + 60))
  for ((i = 0; i < 2000; i++)); do
    if [ "$(sql "SELECT expired_ms IS NOT NULL FROM batches WHERE id = $b")" = 1 ]; then
      [ "$(sql "SELECT purging FROM batches WHERE id = $b")" = 1 ] && mid_reads=$((mid_reads + 1))
      check_reads "$b"
      check_store "$b"
      reads=$((reads + 1))
    fi
    removed "$b" && [ "$reads" -gt 0 ] && break
    [ $SECONDS -lt $deadline ] || fail "batch $b was not removed within 60 s of the restart"
    sleep 0.05  # a poll interval; each pass checks what it reads, whatever it reads
  done
  removed "$b" || fail "batch $b was not removed"
  check_store "$b"
  [ "$(sql "SELECT COUNT(*) FROM results WHERE task BETWEEN $first AND $last")" -eq 0 ] || fail "results of batch $b remain"
  [ "$(sql "SELECT COUNT(*) FROM attempts WHERE task BETWEEN $first AND $last")" -eq 0 ] || fail "attempts of batch $b remain"
  # This run's counters: the rows it found left, and the batch if it marked it.
  [ "$(counter tasks_expired)" -eq "$left" ] || fail "tasks_expired is $(counter tasks_expired), expected $left"
  [ "$(counter batches_expired)" -eq $((1 - marked)) ] || fail "batches_expired is $(counter batches_expired)"
  [ "$(counter expiry_errors)" -eq 0 ] || fail "expiry_errors is $(counter expiry_errors)"
  # The unfinished batch: untouched, and still waiting after the restarts.
  [ "$(sql "SELECT COUNT(*) FROM tasks WHERE batch = $waiting")" -eq 2 ] || fail "the waiting batch lost tasks"
  [ -z "$(sql "SELECT expired_ms FROM batches WHERE id = $waiting")" ] || fail "the waiting batch was marked expired"
  expect_rc 0 mesh status --json
  grep -Eq "\{\"batch\":$waiting,[^}]*\"queued\":2,[^}]*\"finished\":false" "$T/out" ||
    fail "mesh status --json, batch $waiting: $(grep -o "{\"batch\":$waiting,[^}]*}" "$T/out")"
  # No task id handed out again.
  wait_until 60 "the spores to reconnect" spores_back
  new=$(echo again | mesh submit --handler echo --lines - --wait)
  id=$(sql "SELECT MIN(id) FROM tasks WHERE batch = $new")
  [ "$id" -gt "$before_max" ] || fail "task id $id was handed out again (the highest before was $before_max)"
  [ "$(mesh results "$new" | cut -f3)" = again ] || fail "a batch after the restart is wrong"
  # It expires too: gone before the next round, whose counters count that round's batch alone.
  wait_until 30 "batch $new to be removed" removed "$new"
  [ "$caught" = 1 ] && break
done
[ "$caught" = 1 ] || note "no kill of the three landed in the middle of a removal; each round checked where it landed"
note "rounds: $round; kill in the middle of a removal: $caught; passes of reads begun while a removal ran: $mid_reads"
