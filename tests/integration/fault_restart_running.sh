#!/usr/bin/env bash
# SIGKILL the nexus while each spore holds at least 24 tasks (24 slots; a batch with no task time
# measured yet gets one more) and restart it: the spores' hellos name their running tasks, which
# are adopted; no node is left registered
# without a route (its tasks would stay "running" until their 1 h timeout), and the batch
# finishes with exactly one result per task.
. "$(dirname "$0")/lib.sh"
up --spores 2 --slots 24 --nexus-args "--heartbeat 300ms"
total=96
batch=$(printf '3000\n%.0s' $(seq $total) | mesh submit --handler sleep --lines -)
in_flight_24() { mesh nodes --json | grep -o '"in_flight":[0-9]*' | cut -d: -f2 | awk '$1 >= 24 { n++ } END { exit n != 2 }'; }
wait_until 20 "24 tasks in flight on each spore" in_flight_24
"$cluster" kill "$T/c" nexus
"$cluster" restart-nexus "$T/c"
expect_rc 0 timeout 90 mesh wait "$batch" --quiet
store_check "$batch" $total
# Results that came back across the restart keep the spore that ran them and a real attempt.
mesh results "$batch" --json > "$T/results"
! grep -q '"attempts":0' "$T/results" || fail "a result recorded attempt 0: $(grep '"attempts":0' "$T/results" | head -1)"
! grep -q '"node":""' "$T/results" || fail "a result has no node: $(grep '"node":""' "$T/results" | head -1)"
! grep -q 'traversal' "$T/c/nexus.log" || fail "the nexus hit the traversal limit: $(grep traversal "$T/c/nexus.log" | head -1)"
grep -q 'tasks still running there' "$T/c/nexus.log" || fail "no spore rejoined"
adopted=$(grep -o '; [0-9]* tasks still running there' "$T/c/nexus.log" | awk '{ s += $2 } END { print s + 0 }')
[ "$adopted" -gt 0 ] || fail "no running task was adopted after the restart"
[ "$(mesh status --json | grep -o '"nodes_alive":[0-9]*' | cut -d: -f2)" -eq 2 ] || fail "nodes_alive is not 2"
[ "$(counter nodes_without_route)" -eq 0 ] || fail "a node without a route was found"
note "$adopted running tasks adopted after the restart"
