#!/usr/bin/env bash
# The tasks after a long one in a worker's run do not wait for it: before a task that may be
# long starts (for a serve handler's task: once it has run 1 ms), the worker gives the rest of
# its run back to the spore's loop, and the spore's other workers run them. One spore with three
# slots (two long tasks may run at once).
# 1. The built-in `sleep`: 300 tasks of 0 ms, one of 3,000 ms, 300 of 0 ms.
# 2. A serve handler `nap` whose tasks take microseconds but two that sleep 3 s: 400 short, one
#    long, 300 short, one long, 300 short. (Whether a long one comes with tasks after it in its
#    worker's run depends on how the spore's queue filled: without the give-back, at least one
#    of the two did in most runs.)
# Every short task after the long one has its result at the nexus within 1 s of the long task's
# start (without the give-back, those in its run waited for its 3 s).
. "$(dirname "$0")/lib.sh"
mkdir "$T/handlers"
cp "$(dirname "$0")/nap.serve" "$T/handlers/nap.serve"
up --spores 1 --slots 3 --spore-args "--handlers $T/handlers"

# none_waited BATCH LONG...: no task after a long one (index LONG), up to the next long one, has
# its result recorded more than 1 s after the long one started.
none_waited() {
  local batch=$1 long next long_started waited lag
  shift
  local longs=("$@" 1000000) i
  for ((i = 0; i < $#; i++)); do
  long=${longs[i]} next=${longs[i + 1]}
  long_started=$(long_task_start "$batch" "$long")
  waited=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch \
                AND t.idx > $long AND t.idx < $next AND r.finished_ms > $long_started + 1000")
  [ "$waited" -eq 0 ] || fail "batch $batch: $waited short tasks after the long task $long reached the nexus more than 1 s after it started"
  lag=$(sql "SELECT MAX(r.finished_ms) - $long_started FROM results r JOIN tasks t ON t.id = r.task \
             WHERE t.batch = $batch AND t.idx > $long AND t.idx < $next")
  note "batch $batch: the tasks after the long task $long were all done $lag ms after it started"
  done
}

{ for i in $(seq 300); do echo 0; done; echo 3000; for i in $(seq 300); do echo 0; done; } > "$T/sleeps"
batch=$(mesh submit --handler sleep --lines "$T/sleeps")
expect_rc 0 timeout 120 mesh wait "$batch" --quiet
store_check "$batch" 601
none_waited "$batch" 300

{
  for i in $(seq 400); do echo 0; done; echo 3000
  for i in $(seq 300); do echo 0; done; echo 3000
  for i in $(seq 300); do echo 0; done
} > "$T/naps"
batch=$(mesh submit --handler nap --lines "$T/naps")
expect_rc 0 timeout 120 mesh wait "$batch" --quiet
store_check "$batch" 1002
grep -q 'serve handler nap: started pid' "$T"/c/spore-*.log || fail "nap did not run as a serve handler"
none_waited "$batch" 400 701
"$cluster" stop "$T/c" spore-1
given=$({ grep -o 'tasks_given_back=[0-9]*' "$T/c/spore-1.log" || true; } | cut -d= -f2 | awk '{ s += $1 } END { print s + 0 }')
note "the spore's workers gave $given tasks back"
