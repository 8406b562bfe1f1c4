#!/usr/bin/env bash
# `mesh task` shows when a running attempt started, as its spore reported it in a heartbeat
# (before any result); again after a nexus restart (the spore reports it anew after each
# welcome); and an attempt that ends without a report (its spore killed) keeps that start.
. "$(dirname "$0")/lib.sh"
gate_handler "$T/h"
up --spores 1 --slots 1 --nexus-args "--heartbeat 300ms" --spore-args "--handlers $T/h"
running_start() {  # TASK ATTEMPT: the start shown for that running attempt, or nothing
  mesh task "$1" --json 2>/dev/null |
    grep -o "{\"attempt\":$2,\"node\":\"[^\"]*\",\"assigned_ms\":[0-9a-z]*,\"started_ms\":[1-9][0-9]*,\"ended_ms\":null,\"outcome\":\"running\"" |
    sed 's/.*"started_ms":\([0-9]*\).*/\1/'
}
start_shown() { [ -n "$(running_start "$1" "$2")" ]; }

b=$(echo "$T/go" | mesh submit --handler gate --lines -)
t=$(sql "SELECT id FROM tasks WHERE batch = $b")
wait_until 10 "the start of task $t to be shown" start_shown "$t" 1
s1=$(running_start "$t" 1)
submitted=$(sql "SELECT submitted_ms FROM batches WHERE id = $b")
[ "$s1" -ge "$((submitted - 1000))" ] && [ "$s1" -le "$(($(date +%s%3N) + 1000))" ] ||
  fail "start $s1 of task $t is not between its submit ($submitted) and now"
mesh task "$t" > "$T/text"
grep -q "attempt 1 started" "$T/text" && grep -q "attempt 1 running" "$T/text" || fail "mesh task $t: $(cat "$T/text")"

# A new nexus run adopts the task and hears its start again.
"$cluster" kill "$T/c" nexus
"$cluster" restart-nexus "$T/c"
wait_until 20 "the adopted task's start to be shown" start_shown "$t" 1
[ "$(running_start "$t" 1)" = "$s1" ] || fail "after the restart the start is $(running_start "$t" 1), was $s1"

# The spore dies under it: the attempt ends as lost, with the start it had reported.
"$cluster" kill "$T/c" spore-1
lost() { [ "$(sql "SELECT COUNT(*) FROM attempts WHERE task = $t AND attempt = 1")" = 1 ]; }
wait_until 20 "attempt 1 of task $t to end as lost" lost
[ "$(sql "SELECT started_ms FROM attempts WHERE task = $t AND attempt = 1")" = "$s1" ] ||
  fail "the lost attempt's start: $(sql "SELECT * FROM attempts WHERE task = $t")"
"$cluster" add-spore "$T/c" spore-2
wait_until 20 "attempt 2's start to be shown" start_shown "$t" 2
touch "$T/go"
expect_rc 0 timeout 60 mesh wait "$b" --quiet
mesh task "$t" > "$T/text"
grep -q "attempt 1 started" "$T/text" && grep -q "attempt 1 ended: node lost" "$T/text" &&
  grep -q "attempt 2 started" "$T/text" || fail "mesh task $t: $(cat "$T/text")"
[ "$(counter starts_unheld)" = 0 ] || fail "starts_unheld: $(counter starts_unheld)"
note "a running attempt's start shown from heartbeats, kept across a nexus restart and for a lost attempt"
