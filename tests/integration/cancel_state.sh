#!/usr/bin/env bash
# A cancelled batch reads "cancelled" everywhere (mesh status, mesh wait, mesh results, their
# --json and exit codes), also when every task it had was done before the cancel, so that the
# cancel ended none, and after a nexus restart. There are two ways to get there: `mesh cancel`
# of an open batch, and a submit that fails part-way (the client cancels the batch). A cancel of
# a batch that has finished is refused with exit code 5 and changes nothing; a second cancel of
# a cancelled batch is a no-op that succeeds. `mesh task --json` says null, not 0, for a time
# that is unknown or does not apply.
. "$(dirname "$0")/lib.sh"
up --spores 1 --nexus-args "--max-payload 1K"

# The state of batch $1 in `mesh status --json`, and in the STATE column of `mesh status`.
state_json() { mesh status --json | grep -o "{\"batch\":$1,[^}]*}" | grep -o '"state":"[a-z]*"' | cut -d'"' -f4; }
state_text() { mesh status | awk -v b="$1" '$1 == b { print $NF }'; }
newest_open() { sql "SELECT id FROM batches WHERE sealed = 0 ORDER BY id DESC LIMIT 1"; }
batches_are() { [ "$(sql "SELECT COUNT(*) FROM batches WHERE sealed = 0")" -eq "$1" ] && [ "$(sql "SELECT COUNT(*) FROM batches")" -eq "$2" ]; }
gone() { ! kill -0 "$1" 2>/dev/null; }

# hold_submit NAME: `mesh submit --handler echo` reading lines from the FIFO $T/NAME, which this
# shell holds open on fd 3, so that the client sends its first chunk (10,000 tasks) and then
# waits for more input with its batch open. Sets $sub to the client's PID.
hold_submit() {
  mkfifo "$T/$1"
  exec 3<> "$T/$1"
  mesh submit --handler echo --lines "$T/$1" > "$T/$1.out" 2> "$T/$1.err" 3>&- &
  sub=$!
  extra_pids+=("$sub")
}

# finished_cancelled B OK: mesh wait, mesh status and mesh results all say batch B was
# cancelled, with OK tasks succeeded and none cancelled (the cancel came after they were done).
finished_cancelled() {
  local b=$1 ok=$2
  expect_rc 1 timeout 30 mesh wait "$b" --json
  grep -q "{\"batch\":$b,\"total\":$ok,\"succeeded\":$ok,\"failed\":0,\"cancelled\":0,\"finished\":true,\"state\":\"cancelled\"}" "$T/out" ||
    fail "mesh wait --json of batch $b: $(cat "$T/out")"
  grep -q "batch $b was cancelled" "$T/err" || fail "mesh wait does not say batch $b was cancelled: $(cat "$T/err")"
  expect_rc 1 timeout 30 mesh wait "$b"
  [ "$(state_text "$b")" = cancelled ] || fail "mesh status shows batch $b as $(state_text "$b")"
  [ "$(state_json "$b")" = cancelled ] || fail "mesh status --json shows batch $b as $(state_json "$b")"
  expect_rc 1 mesh results "$b"
  [ "$(grep -c $'\tok\t' "$T/out")" -eq "$ok" ] || fail "mesh results of batch $b: $(wc -l < "$T/out") rows"
  grep -q "batch $b was cancelled" "$T/err" || fail "mesh results does not say batch $b was cancelled: $(cat "$T/err")"
  expect_rc 1 mesh results "$b" --json
  [ "$(sql "SELECT sealed, total, cancelled_ms IS NOT NULL, finished_ms IS NOT NULL FROM batches WHERE id = $b")" = "1|$ok|1|1" ] ||
    fail "batch $b in the store: $(sql "SELECT * FROM batches WHERE id = $b")"
}

# 1. `mesh cancel` of an open batch whose 10,000 accepted tasks have all succeeded: the cancel
# ends no task, and the batch still reads cancelled (it used to read finished, and exit 0).
hold_submit a
timeout 20 seq 1 20000 >&3
wait_until 20 "an open batch" batches_are 1 1
a=$(newest_open)
wait_until 60 "the 10000 tasks of batch $a" at_least_done "$a" 10000
[ "$(state_json "$a")" = open ] || fail "the held batch $a is $(state_json "$a"), not open"
expect_rc 0 mesh cancel "$a"
grep -qx "batch $a: 0 tasks cancelled" "$T/out" || fail "mesh cancel of batch $a: $(cat "$T/out")"
finished_cancelled "$a" 10000
# The client then sends its next chunk, which is refused (the batch is sealed); its own cancel
# of the batch finds it cancelled already, and says so.
exec 3>&-
wait_until 30 "the submit of batch $a to end" gone "$sub"
set +e; wait "$sub"; rc=$?; set -e
[ "$rc" -eq 1 ] || fail "the submit of batch $a exited $rc: $(cat "$T/a.err")"
grep -q "; batch $a was cancelled: its first 10000 tasks were accepted before this failure\$" "$T/a.err" ||
  fail "the submit of batch $a: $(cat "$T/a.err")"
# Cancelling a cancelled batch again changes nothing and succeeds.
expect_rc 0 mesh cancel "$a"
grep -qx "batch $a: 0 tasks cancelled" "$T/out" || fail "a second cancel of batch $a: $(cat "$T/out")"

# 2. A submit that fails part-way (a payload in its second chunk over --max-payload) after its
# first chunk's 10,000 tasks have all succeeded: the client cancels the batch, which must not
# read as a clean success.
hold_submit b
{ seq 1 19999; head -c 2000 /dev/zero | tr '\0' x; echo; } > "$T/b.lines"
timeout 20 cat "$T/b.lines" >&3
wait_until 20 "a second open batch" batches_are 1 2
b=$(newest_open)
[ "$b" != "$a" ] || fail "no new batch"
wait_until 60 "the 10000 tasks of batch $b" at_least_done "$b" 10000
exec 3>&-
wait_until 30 "the submit of batch $b to end" gone "$sub"
set +e; wait "$sub"; rc=$?; set -e
[ "$rc" -eq 1 ] || fail "the failed submit exited $rc: $(cat "$T/b.err")"
grep -q "task 19999 has a payload of 2000 bytes.*; batch $b was cancelled: its first 10000 tasks were accepted before this failure\$" "$T/b.err" ||
  fail "the failed submit: $(cat "$T/b.err")"
finished_cancelled "$b" 10000

# 3. After a restart the cancels are read from the store: the same answers.
"$cluster" kill "$T/c" nexus
"$cluster" restart-nexus "$T/c"
finished_cancelled "$a" 10000
finished_cancelled "$b" 10000
expect_rc 0 mesh cancel "$b"
spore_back() { mesh nodes --json | grep -q '"name":"spore-1"'; }
wait_until 30 "the spore to rejoin the restarted nexus" spore_back

# 4. A batch that has finished is not cancelled: exit 5, and it stays finished.
c=$(echo x | mesh submit --handler echo --lines - --wait -q)
expect_rc 5 mesh cancel "$c"
grep -q "batch $c has finished already" "$T/err" || fail "the refused cancel: $(cat "$T/err")"
expect_rc 0 mesh wait "$c" --json
grep -q '"finished":true,"state":"finished"}' "$T/out" || fail "batch $c after a refused cancel: $(cat "$T/out")"
[ "$(state_text "$c")" = finished ] || fail "mesh status shows batch $c as $(state_text "$c")"
[ "$(sql "SELECT cancelled_ms IS NULL FROM batches WHERE id = $c")" = 1 ] || fail "the refused cancel was stored"
expect_rc 1 mesh cancel 999999
grep -q "no batch 999999" "$T/err" || fail "cancel of an unknown batch: $(cat "$T/err")"

# 5. `mesh task --json`: null for times that are unknown or do not apply, never 0.
no_zero_times() { ! grep -q '_ms":0[,}]' "$1" || fail "a time of 0 in $(cat "$1")"; }
task_of() { sql "SELECT id FROM tasks WHERE batch = $1"; }
q=$(echo 5 | mesh submit --handler sleep --requires nosuch --lines - 2> /dev/null)
mesh task "$(task_of "$q")" --json > "$T/queued.json"
grep -q '"state":"queued",.*"finished_ms":null,.*"attempts":\[\]' "$T/queued.json" || fail "queued task: $(cat "$T/queued.json")"
no_zero_times "$T/queued.json"
expect_rc 0 mesh cancel "$q"
mesh task "$(task_of "$q")" --json > "$T/never.json"
grep -q '"state":"cancelled",.*"finished_ms":[1-9][0-9]*,.*"attempts":\[\]' "$T/never.json" ||
  fail "a task cancelled before it ran: $(cat "$T/never.json")"
no_zero_times "$T/never.json"
mesh task "$(task_of "$q")" > "$T/never.txt"
! grep -q "attempt\|before a nexus restart" "$T/never.txt" || fail "a task that never ran has an attempt: $(cat "$T/never.txt")"
grep -q "Z  cancelled: cancelled by the client\$" "$T/never.txt" || fail "the end of a task that never ran: $(cat "$T/never.txt")"
! grep -q "^output:" "$T/never.txt" || fail "a task that never ran shows an output: $(cat "$T/never.txt")"
e=$(printf '\n' | mesh submit --handler echo --lines - --wait)
mesh task "$(task_of "$e")" > "$T/empty.txt"
grep -qx "output: " "$T/empty.txt" || fail "a success with an empty output shows none: $(cat "$T/empty.txt")"
# An attempt that failed (its start as the spore reported it, schema 11) before the one that ended the task.
f=$(echo boom | mesh submit --handler fail --attempts 2 --lines -)
expect_rc 1 timeout 30 mesh wait "$f"
mesh task "$(task_of "$f")" --json > "$T/failed.json"
grep -q '{"attempt":1,"node":"spore-1","assigned_ms":[1-9][0-9]*,"started_ms":[1-9][0-9]*,"ended_ms":[1-9][0-9]*,"outcome":"failed"' "$T/failed.json" ||
  fail "the first attempt of a failed task: $(cat "$T/failed.json")"
no_zero_times "$T/failed.json"
# A running attempt: no end yet, and the task has not finished.
r=$(echo 20000 | mesh submit --handler sleep --lines -)
wait_until 20 "the sleep task to run" sh -c "mesh task $(task_of "$r") | grep -qx 'state: running'"
mesh task "$(task_of "$r")" --json > "$T/running.json"
grep -q '"finished_ms":null,.*"assigned_ms":[1-9][0-9]*,"started_ms":null,"ended_ms":null,"outcome":"running"' "$T/running.json" ||
  fail "a running task: $(cat "$T/running.json")"
no_zero_times "$T/running.json"
expect_rc 0 mesh cancel "$r"
note "cancelled batches read cancelled before and after a restart; unknown times are null"
