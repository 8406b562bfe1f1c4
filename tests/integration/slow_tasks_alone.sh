#!/usr/bin/env bash
# A spore gives microsecond tasks to its workers in runs, but the tasks of a handler it has seen
# take a millisecond or more go one by one: otherwise the results of the short tasks before a
# long one in the same run wait for it. One spore with one slot; `sleep` is seen slow first
# (a 20 ms task); then 200 tasks of 0 ms, one of 2,000 ms and 10 of 0 ms: every 0 ms task that
# started before the long one has its result at the nexus long before the long one ends.
. "$(dirname "$0")/lib.sh"
up --spores 1 --slots 1
expect_rc 0 timeout 30 mesh submit --handler sleep --lines - --wait <<< 20
{ for i in $(seq 200); do echo 0; done; echo 2000; for i in $(seq 10); do echo 0; done; } > "$T/sleeps"
batch=$(mesh submit --handler sleep --lines "$T/sleeps")
expect_rc 0 timeout 60 mesh wait "$batch" --quiet
store_check "$batch" 211
long_started=$(sql "SELECT r.started_ms FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch AND t.idx = 200")
[ -n "$long_started" ] && [ "$long_started" -gt 0 ] || fail "no start time for the long task"
held=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch AND t.idx < 200 \
            AND r.finished_ms > $long_started + 1000")
[ "$held" -eq 0 ] || fail "$held results of 0 ms tasks before the long one reached the nexus more than 1 s after it started"
note "no short result waited for the long task"
