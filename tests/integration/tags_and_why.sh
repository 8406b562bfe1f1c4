#!/usr/bin/env bash
# A task requiring `gpu` runs only on the spore tagged gpu; one requiring a tag nobody has is
# accepted with a warning, stays pending, and `mesh task` says why.
. "$(dirname "$0")/lib.sh"
up --spores 2
"$cluster" add-spore "$T/c" gpu-box --tags gpu
batch=$(seq 1 200 | mesh submit --handler echo --requires gpu --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
mesh results "$batch" --json > "$T/r"
[ "$(grep -c '"node":"gpu-box"' "$T/r")" -eq 200 ] || fail "a gpu task ran elsewhere: $(grep -v gpu-box "$T/r" | head -2)"
# A requirement no live spore meets is accepted (such a spore may join later), with a warning.
pending=$(echo x | mesh submit --handler echo --requires tpu --lines - --json 2> "$T/warn" | grep -o '[0-9]*')
grep -q "batch $pending: no live spore that offers handler 'echo' has the tags tpu: its tasks wait" "$T/warn" ||
  fail "no warning for an unmatched requirement: $(cat "$T/warn")"
task=$(sql "SELECT id FROM tasks WHERE batch = $pending")
first=$(mesh task "$task" --json)
echo "$first" | grep -q '"state":"queued"' || fail "the tpu task is not queued: $first"
wait_until 10 "mesh task to explain the wait" sh -c "mesh task $task | grep -q 'why: no live spore has tag(s) tpu'"
# The same task by its batch and index, which a user has without the store (exit 1: none there).
wait_until 10 "mesh task BATCH:INDEX to explain the wait" sh -c "mesh task $pending:0 | grep -q 'why: no live spore has tag(s) tpu'"
expect_rc 0 mesh task "$pending:0" --json
grep -q "\"task\":$task," "$T/out" || fail "mesh task $pending:0 is not task $task: $(cat "$T/out")"
expect_rc 1 mesh task "$pending:1"
grep -q "batch $pending has no task 1 (its indexes are 0 to 0)" "$T/err" || fail "an index past the end: $(cat "$T/err")"
expect_rc 1 mesh task 999999:0
grep -q "no batch 999999" "$T/err" || fail "an unknown batch: $(cat "$T/err")"
expect_rc 2 mesh task "$pending:x"
mesh status --json | grep -q "\"batch\":$pending,[^}]*\"queued\":1" || fail "status does not show the pending task"
# The ack comes after the commit: while another process holds SQLite's write lock the cancel
# cannot be stored, so `mesh cancel` must not return; once the lock goes, it returns and the
# cancel is in the file.
mkfifo "$T/lock.in"
sqlite3 -cmd ".timeout 5000" "$T/c/nexus/nexus.db" < "$T/lock.in" > "$T/lock.out" 2>&1 &
extra_pids+=($!)
exec 7> "$T/lock.in"
echo "BEGIN IMMEDIATE; SELECT 'locked';" >&7
wait_until 10 "an external write lock on the nexus database" grep -q locked "$T/lock.out"
mesh cancel "$pending" > "$T/cancel.out" 2>&1 &
cancel_pid=$!
extra_pids+=("$cancel_pid")
sleep 1  # the window in which it must not return (the nexus waits up to 10 s for the lock)
kill -0 "$cancel_pid" 2>/dev/null || fail "mesh cancel returned before its cancel could be stored"
echo "COMMIT;" >&7
exec 7>&-
wait "$cancel_pid" || fail "mesh cancel failed: $(cat "$T/cancel.out")"
[ "$(sql "select cancelled_ms is not null from batches where id = $pending")" = 1 ] ||
  fail "the cancel is not in the database after mesh cancel returned"
expect_rc 1 timeout 30 mesh wait "$pending"
note "tags route tasks; an unmatched requirement is explained"
