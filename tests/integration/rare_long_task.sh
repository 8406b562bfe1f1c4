#!/usr/bin/env bash
# A spore's worker runs short tasks in runs, but it hands the results it holds to the spore's
# loop before it starts any task that may be long (anything but the microsecond built-ins), so
# that no result waits for a long task, even one of a handler not known to be slow. One spore
# with one slot.
# 1. The built-in `sleep`, never seen slow here: 300 tasks of 0 ms, one of 3,000 ms, 300 of 0 ms,
#    one of 3,000 ms, 10 of 0 ms. The first long task comes in a run after short ones; so may the
#    second (`sleep` counts as slow for only 256 tasks after the first).
# 2. A serve handler `nap` (nap.serve, a Perl process fed many tasks) whose tasks take well under
#    1 ms but the rare one (fewer than one in 256) that sleeps 3 s: 400 short, one long, 5 short.
# Every short task before a long one has its result at the nexus within 1 s of the long task's
# start (without the fix, the short ones in its run waited for its 3 s).
. "$(dirname "$0")/lib.sh"
mkdir "$T/handlers"
cp "$(dirname "$0")/nap.serve" "$T/handlers/nap.serve"
up --spores 1 --slots 1 --spore-args "--handlers $T/handlers"

# no_result_held BATCH LONG...: no task before a long one (index LONG) has its result recorded
# more than 1 s after the long one started.
no_result_held() {
  local batch=$1 long long_started held short lag
  shift
  for long in "$@"; do
    long_started=$(long_task_start "$batch" "$long")
    held=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch \
                AND t.idx < $long AND r.finished_ms > $long_started + 1000")
    [ "$held" -eq 0 ] || fail "batch $batch: $held results of short tasks before the long task $long reached the nexus more than 1 s after it started"
    # How many of the 256 tasks right before it took under 1 ms: all of them, and its handler
    # did not count as slow when it came.
    short=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch \
                 AND t.idx BETWEEN $long - 256 AND $long - 1 AND r.duration_us < 1000")
    lag=$(sql "SELECT MAX(r.finished_ms) - $long_started FROM results r JOIN tasks t ON t.id = r.task \
               WHERE t.batch = $batch AND t.idx < $long")
    note "batch $batch, long task $long: the results before it were all in $lag ms after its start;" \
         "$short of the 256 tasks before it took under 1 ms"
  done
}

{
  for i in $(seq 300); do echo 0; done; echo 3000
  for i in $(seq 300); do echo 0; done; echo 3000
  for i in $(seq 10); do echo 0; done
} > "$T/sleeps"
batch=$(mesh submit --handler sleep --lines "$T/sleeps")
expect_rc 0 timeout 120 mesh wait "$batch" --quiet
store_check "$batch" 612
no_result_held "$batch" 300 601

{ for i in $(seq 400); do echo 0; done; echo 3000; for i in $(seq 5); do echo 0; done; } > "$T/naps"
batch=$(mesh submit --handler nap --lines "$T/naps")
expect_rc 0 timeout 120 mesh wait "$batch" --quiet
store_check "$batch" 406
grep -q 'serve handler nap: started pid' "$T"/c/spore-*.log || fail "nap did not run as a serve handler"
no_result_held "$batch" 400
