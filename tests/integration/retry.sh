#!/usr/bin/env bash
# `mesh retry BATCH`: the failed tasks of a finished batch (failed, timed out) run again as a new
# batch once their cause is fixed, with the same payloads (a large one too, after its payload log
# segment was collected), each result naming the task it retries; the original never changes;
# the retry survives a nexus SIGKILL between its ack and its end. Refusals: unknown batch, batch
# 0, a batch not finished (exit 4), a map-reduce stage, a batch with no failed task (exit 0,
# nothing on stdout), a cancelled batch (its failed tasks only), an expired batch (exit 6),
# options retry keeps from the batch (exit 2), and hostile Retry messages (an Error each).
. "$(dirname "$0")/lib.sh"

# picky: echoes its payload, but until $T/fixed exists fails on payloads starting "bad" and
# hangs on those starting "slow" (timed out); "hang" always sleeps 30 s. With $T/slowfix, every
# task takes 2 s (so that the nexus can be killed while a retry runs).
mkdir -p "$T/handlers"
cat > "$T/handlers/picky" <<EOF
#!/bin/sh
cat > in
case "\$(head -c 4 in)" in
  hang) sleep 30 ;;
esac
if [ ! -e "$T/fixed" ]; then
  case "\$(head -c 4 in)" in
    bad*) echo "not fixed yet" >&2; exit 1 ;;
    slow) sleep 30 ;;
  esac
fi
[ -e "$T/slowfix" ] && sleep 2
cat in
EOF
chmod +x "$T/handlers/picky"
up --spores 2 --spore-args "--handlers $T/handlers"

big="bad-big-$(head -c 3000 /dev/zero | tr '\0' x)"  # over 1 KiB: goes to the payload log
printf '%s\n' ok-0 bad-1 ok-2 slow-3 "$big" ok-5 > "$T/a.lines"
a=$(mesh submit --handler picky --lines "$T/a.lines" --attempts 2 --task-timeout 1s --label first)
expect_rc 1 timeout 60 mesh wait "$a"
store_check "$a" 6
[ "$(sql "SELECT group_concat(t.idx || ':' || r.status, ' ') FROM tasks t JOIN results r ON r.task = t.id WHERE t.batch = $a ORDER BY t.idx")" = "0:0 1:1 2:0 3:2 4:1 5:0" ] ||
  fail "batch $a did not end as planned: $(sql "SELECT t.idx, r.status, r.error FROM tasks t JOIN results r ON r.task = t.id WHERE t.batch = $a")"
snapshot() { sql "SELECT t.id, t.idx, r.status, hex(r.output), r.error, r.attempts, r.finished_ms FROM tasks t JOIN results r ON r.task = t.id WHERE t.batch = $1 ORDER BY t.idx"; }
before=$(snapshot "$a")
# The failed big payload left the payload log for its row; after a restart the writer deletes
# the segment it was in (no unfinished batch needs it), so a retry can only take it from there.
[ "$(sql "SELECT COUNT(*) FROM tasks t JOIN results r ON r.task = t.id WHERE t.batch = $a AND r.status != 0 AND t.payload_segment IS NOT NULL")" -eq 0 ] ||
  fail "a failed task of batch $a still has its payload in the payload log only"
"$cluster" stop "$T/c" nexus
"$cluster" restart-nexus "$T/c"
# A commit (once the spores are back): after it the writer collects segments.
wait_until 30 "a batch after the restart" sh -c 'seq 1 3 | mesh submit --handler echo --lines - --wait'
wait_until 30 "the old payload segment to be deleted" test ! -e "$T/c/nexus/payloads/00000001.seg"

note "refusals"
expect_rc 1 mesh retry 999999
grep -q "no batch 999999" "$T/err" || fail "retry of an unknown batch: $(cat "$T/err")"
expect_rc 1 mesh retry 0
grep -q "no batch 0" "$T/err" || fail "retry of batch 0: $(cat "$T/err")"
expect_rc 2 mesh retry
expect_rc 2 mesh retry "$a" --handler echo
grep -q -- "--handler is for submit" "$T/err" || fail "retry --handler: $(cat "$T/err")"
expect_rc 0 "$MESH_BUILD/tests/integration/hostile_client" "$MESH_NEXUS" "$MESH_NEXUS_KEY" "$MESH_KEY" retries 0 0
[ "$(grep -c '^retry [0-9]: error ' "$T/out")" -eq 6 ] || fail "hostile retries: $(cat "$T/out")"
# A batch with a failure, still running: not finished (exit 4). Cancelled, it retries its failed
# task only (the cancelled ones are not failures).
c=$(printf '%s\n' bad-c hang-1 hang-2 | mesh submit --handler picky --lines - --attempts 1)
wait_until 30 "the failure of batch $c" at_least_done "$c" 1
expect_rc 4 mesh retry "$c"
grep -q "batch $c has not finished .*wait for it first" "$T/err" || fail "retry of a running batch: $(cat "$T/err")"
[ ! -s "$T/out" ] || fail "retry of a running batch printed $(cat "$T/out")"
expect_rc 0 mesh cancel "$c"
expect_rc 1 timeout 30 mesh wait "$c"
# A batch with no failed task: nothing made.
ok=$(seq 1 3 | mesh submit --handler echo --lines - --wait)
batches=$(sql "SELECT COUNT(*) FROM batches")
expect_rc 0 mesh retry "$ok"
[ ! -s "$T/out" ] || fail "retry of a batch without failures printed $(cat "$T/out")"
grep -qx "mesh: batch $ok has no failed tasks: nothing to retry" "$T/err" || fail "retry of batch $ok: $(cat "$T/err")"
[ "$(sql "SELECT COUNT(*) FROM batches")" -eq "$batches" ] || fail "a retry of batch $ok made a batch"
# A map-reduce job's stages: the job is the unit.
printf 'x\ny\n' > "$T/mr.in"
expect_rc 0 timeout 60 mesh mapreduce --mapper picky --reducer picky --reducers 1 --output "$T/mr" "$T/mr.in"
map=$(sql "SELECT id FROM batches WHERE mr_stage = 1")
reduce=$(sql "SELECT next_batch FROM batches WHERE id = $map")
for stage in "$map" "$reduce"; do
  expect_rc 1 mesh retry "$stage"
  grep -q "stage of a map-reduce job, which is retried as a whole: submit the job again" "$T/err" ||
    fail "retry of job stage $stage: $(cat "$T/err")"
done

note "a retry before the fix fails the same way, and names its originals"
r0=$(mesh retry "$a" --attempts 1 --task-timeout 1s)
expect_rc 1 timeout 60 mesh wait "$r0"
store_check "$r0" 3
[ "$(sql "SELECT label, retry_of FROM batches WHERE id = $r0")" = "first (retry of batch $a)|$a" ] ||
  fail "batch $r0: $(sql "SELECT label, retry_of FROM batches WHERE id = $r0")"
expect_rc 1 mesh results "$r0" --json
for i in 0 1 2; do
  orig=$(echo 1 3 4 | cut -d' ' -f$((i + 1)))
  task=$(sql "SELECT id FROM tasks WHERE batch = $a AND idx = $orig")
  grep -q "\"index\":$i,.*\"retry_of\":{\"batch\":$a,\"index\":$orig,\"task\":$task}}\$" "$T/out" ||
    fail "row $i of retry $r0 does not name task $task (index $orig of batch $a): $(cat "$T/out")"
done

note "fix, retry the retry, and kill the nexus between its ack and its end"
touch "$T/fixed" "$T/slowfix"
r=$(mesh retry "$r0" --json --task-timeout 30s --attempts 2 --priority 7 --label again | grep -o '"batch":[0-9]*' | cut -d: -f2)
[ -n "$r" ] || fail "no batch id from mesh retry --json"
[ "$(sql "SELECT handler, priority, timeout_ms, max_attempts, label, retry_of FROM batches WHERE id = $r")" = "picky|7|30000|2|again|$r0" ] ||
  fail "the overrides of retry $r: $(sql "SELECT * FROM batches WHERE id = $r")"
"$cluster" kill "$T/c" nexus
[ "$(sql "SELECT COUNT(*) FROM results x JOIN tasks t ON t.id = x.task WHERE t.batch = $r")" -eq 0 ] ||
  fail "retry batch $r ended before the nexus was killed: the test proves nothing"
[ "$(sql "SELECT COUNT(*) FROM tasks WHERE batch = $r")" -eq 3 ] || fail "the acknowledged retry $r has not 3 tasks in the store"
rm -f "$T/slowfix"
"$cluster" restart-nexus "$T/c"
expect_rc 0 timeout 60 mesh wait "$r"
store_check "$r" 3
expect_rc 0 mesh results "$r" --json
i=0
for orig in 1 3 4; do
  want=$(sed -n "$((orig + 1))p" "$T/a.lines")
  row=$(grep "\"index\":$i," "$T/out")
  [ "$(grep -o '"output":"[^"]*"' <<< "$row" | cut -d'"' -f4)" = "$want" ] ||
    fail "retried task $i does not echo the payload of index $orig: $row"
  r0task=$(sql "SELECT id FROM tasks WHERE batch = $r0 AND idx = $i")
  grep -q "\"retry_of\":{\"batch\":$r0,\"index\":$i,\"task\":$r0task}" <<< "$row" || fail "row $i of $r: $row"
  i=$((i + 1))
done
expect_rc 0 mesh results "$r"
[ "$(cut -f4 "$T/out" | tr '\n' ' ')" = "$r0:0 $r0:1 $r0:2 " ] || fail "text results of $r: $(cat "$T/out")"
task=$(sql "SELECT id FROM tasks WHERE batch = $r AND idx = 2")
r0task=$(sql "SELECT id FROM tasks WHERE batch = $r0 AND idx = 2")
expect_rc 0 mesh task "$task"
grep -qx "retry of task $r0task (batch $r0, index 2)" "$T/out" || fail "mesh task $task: $(cat "$T/out")"
# The originals did not change.
[ "$(snapshot "$a")" = "$before" ] || fail "batch $a changed"
expect_rc 1 mesh results "$a"
# The cancelled batch: its one failed task, not its cancelled ones.
rc_=$(mesh retry "$c" --results 2> "$T/c.err") || fail "retry of cancelled batch $c: $(cat "$T/c.err")"
[ "$rc_" = "$(printf '0\tok\tbad-c\t%s:0' "$c")" ] || fail "retry of cancelled batch $c printed: $rc_"

note "an expired batch"
echo "--keep-finished 1s" >> "$T/c/nexus-args"
"$cluster" stop "$T/c" nexus
"$cluster" restart-nexus "$T/c"
wait_until 30 "batch $a to expire" test "$(sql "SELECT expired_ms IS NOT NULL FROM batches WHERE id = $a")" = 1
expect_rc 6 mesh retry "$a"
grep -q "its tasks and results were removed .*: its failed tasks cannot be retried" "$T/err" || fail "retry of expired batch $a: $(cat "$T/err")"
note "ok"
