#!/usr/bin/env bash
# A handler that hangs past its timeout, one that crashes and one that fails every time: timed
# out, retried, and finally failed with the reason, without disturbing other tasks.
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/handlers"
printf '#!/bin/sh\nkill -SEGV $$\n' > "$T/handlers/crash"
chmod 755 "$T/handlers/crash"
up --spores 2 --spore-args "--handlers $T/handlers"
hang=$(echo 60000 | mesh submit --handler sleep --task-timeout 300ms --attempts 2 --lines -)
crash=$(echo x | mesh submit --handler crash --attempts 2 --lines -)
failing=$(echo "disk on fire" | mesh submit --handler fail --attempts 3 --lines -)
good=$(seq 1 500 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 60 mesh wait "$good"
store_check "$good" 500
for b in "$hang" "$crash" "$failing"; do expect_rc 1 timeout 60 mesh wait "$b"; store_check "$b" 1; done
# `mesh results` exits 1 when tasks failed, as these did.
for b in hang crash failing; do expect_rc 1 mesh results "${!b}" --json; cp "$T/out" "$T/$b.json"; done
grep -q '"status":"timed out".*"attempts":2' "$T/hang.json" || fail "hang: $(cat "$T/hang.json")"
grep -q '"status":"crashed".*"attempts":2' "$T/crash.json" || fail "crash: $(cat "$T/crash.json")"
grep -qi 'SIGSEGV\|signal' "$T/crash.json" || fail "crash reason missing: $(cat "$T/crash.json")"
grep -q '"status":"failed".*disk on fire.*"attempts":3' "$T/failing.json" || fail "fail: $(cat "$T/failing.json")"
# The timeline shows each attempt and why it ended.
task=$(grep -o '"task":[0-9]*' "$T/hang.json" | cut -d: -f2)
mesh task "$task" > "$T/timeline"
grep -q "attempt 1 ended: timed out" "$T/timeline" || fail "timeline: $(cat "$T/timeline")"
grep -q "attempt 2 ended: timed out" "$T/timeline" || fail "timeline: $(cat "$T/timeline")"
[ "$(counter tasks_retried)" -ge 4 ] || fail "expected at least 4 retries, counted $(counter tasks_retried)"
[ "$(counter tasks_timed_out)" -ge 1 ] || fail "timed-out tasks not counted"
note "retried=$(counter tasks_retried) timed_out=$(counter tasks_timed_out) failed=$(counter tasks_failed)"
