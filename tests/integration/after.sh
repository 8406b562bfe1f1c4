#!/usr/bin/env bash
# Batches that wait for others (mesh submit --after / --after-done; protocol section 4.21), on the
# real binaries: a batch after a running one is stored at once and shows waiting (status, task,
# the submit's warning) and its tasks start only after the other's finished; a failure cancels
# the batches after it, in a cascade, with an error that names the cause, while --after-done
# runs; refusals (unknown id, a failed batch with --after, too many ids, not an id); a nexus
# SIGKILLed while a batch waits keeps it waiting and starts it after its dependency; a waiting
# batch can be cancelled; a map-reduce job (scripts/mapreduce.sh -a) waits, and a batch after
# the job starts only once its reduce stage has finished; hostile submits (hostile_client afters:)
# are refused and counted, and the nexus keeps serving.
. "$(dirname "$0")/lib.sh"
up --spores 1 --slots 4

state_of() { mesh status --json | grep -o "{\"batch\":$1,[^}]*}"; }
is_state() { state_of "$1" | grep -q "\"state\":\"$2\""; }
# first_start B / last_end B: from the store, the earliest start and the latest end of B's results.
first_start() { sql "SELECT MIN(r.started_ms) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $1"; }
last_end() { sql "SELECT MAX(r.finished_ms) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $1"; }
runs_after() {
  local s e
  s=$(first_start "$2")
  e=$(last_end "$1")
  [ -n "$s" ] && [ -n "$e" ] && [ "$s" -ge "$e" ] || fail "batch $2 started at $s, before batch $1 ended at $e"
}

note "a chain: B waits while A's sleep tasks run, then runs after them"
a=$(printf '1500\n1500\n' | mesh submit --handler sleep --lines - --label A)
expect_rc 0 mesh submit --handler echo --lines /dev/stdin --after "$a" --label B <<< $'x\ny\nz'
b=$(cat "$T/out")
grep -q "mesh: batch $b: batch $b waits for batch $a (--after) to finish" "$T/err" || fail "no waiting warning: $(cat "$T/err")"
is_state "$b" waiting || fail "batch $b does not show waiting: $(state_of "$b")"
state_of "$b" | grep -q "\"after\":\\[$a\\],\"after_done\":\\[\\],\"waiting_for\":\\[$a\\]" || fail "status --json: $(state_of "$b")"
[ "$(sql "SELECT held FROM batches WHERE id = $b") $(sql "SELECT dep || ':' || need_ok FROM batch_after WHERE batch = $b")" = "1 $a:1" ] ||
  fail "batch $b is not stored held after $a"
expect_rc 0 mesh task "$b:0"
grep -q "why: batch $b waits for batch $a (--after)" "$T/out" || fail "mesh task does not say why: $(cat "$T/out")"
expect_rc 0 mesh batches --state waiting --json
grep -q "\"batch\":$b," "$T/out" || fail "mesh batches --state waiting does not list $b: $(cat "$T/out")"
is_state "$a" running || fail "batch $a: $(state_of "$a")"
expect_rc 0 timeout 30 mesh wait "$b" --json
grep -q "\"after\":\\[$a\\]" "$T/out" || fail "mesh wait --json: $(cat "$T/out")"
runs_after "$a" "$b"
store_check "$b" 3

note "a failure cancels what waits for it, in a cascade; --after-done runs"
s=$(echo 1500 | mesh submit --handler sleep --lines - --label S)
f=$(printf 'boom\nbang\n' | mesh submit --handler fail --attempts 1 --lines - --after-done "$s" --label F 2> /dev/null)
g=$(echo x | mesh submit --handler echo --lines - --after "$f" --label G 2> /dev/null)
h=$(echo x | mesh submit --handler echo --lines - --after "$g" --label H 2> /dev/null)
d=$(echo x | mesh submit --handler echo --lines - --after-done "$f" --after "$s" --label D 2> /dev/null)
expect_rc 1 timeout 30 mesh wait "$g"
grep -q "batch $g was cancelled: batch $f finished with 2 failed tasks; nothing of this batch ran (--after $f)" "$T/err" ||
  fail "mesh wait of the batch after a failure: $(cat "$T/err")"
expect_rc 1 mesh results "$g" --json
grep -q "\"status\":\"cancelled\",.*\"error\":\"batch $f finished with 2 failed tasks; nothing of this batch ran" "$T/out" ||
  fail "mesh results: $(cat "$T/out")"
expect_rc 1 timeout 30 mesh wait "$h"
grep -q "batch $h was cancelled: batch $g was cancelled" "$T/err" || fail "the cascade: $(cat "$T/err")"
expect_rc 0 timeout 30 mesh wait "$d"
runs_after "$f" "$d"
[ "$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch IN ($g, $h) AND r.attempts = 0")" -eq 2 ] ||
  fail "a task of a cancelled waiting batch ran"
[ "$(counter batches_cancelled_by_dependency)" -eq 2 ] || fail "batches_cancelled_by_dependency is $(counter batches_cancelled_by_dependency)"

note "refusals"
refused0=$(counter submits_after_refused)
expect_rc 1 mesh submit --handler echo --lines /dev/null --after 99999
grep -q "no batch 99999 to wait for" "$T/err" || fail "unknown id: $(cat "$T/err")"
expect_rc 1 mesh submit --handler echo --lines /dev/null --after "$f"
grep -q "batch $f finished with 2 failed tasks: .*mesh retry $f.*--after-done $f" "$T/err" || fail "failed id: $(cat "$T/err")"
expect_rc 0 mesh submit --handler echo --lines /dev/null --after-done "$f"  # its end is all it waits for: runs
many=$(seq -s, 1 65)
expect_rc 1 mesh submit --handler echo --lines /dev/null --after-done "$many"
grep -q "at most 64 batches" "$T/err" || fail "65 ids: $(cat "$T/err")"
expect_rc 2 mesh submit --handler echo --lines /dev/null --after x
expect_rc 2 mesh submit --handler echo --lines /dev/null --after ""
expect_rc 2 mesh submit --handler echo --lines /dev/null --after "$a,"
[ "$(counter submits_after_refused)" -eq $((refused0 + 3)) ] || fail "submits_after_refused: $(counter submits_after_refused)"

note "the nexus SIGKILLed while a batch waits: it waits on, and runs after its dependency"
k=$(printf '2500\n2500\n' | mesh submit --handler sleep --lines - --label K)
w=$(printf '1\n2\n' | mesh submit --handler sha256 --lines - --after "$k" --label W 2> /dev/null)
wait_until 10 "batch $k to run" sh -c "mesh status --json | grep -q '\"batch\":$k,[^}]*\"running\":2'"
"$cluster" kill "$T/c" nexus
[ "$(sql "SELECT held FROM batches WHERE id = $w")" = 1 ] || fail "batch $w is not stored held"
"$cluster" restart-nexus "$T/c"
wait_until 20 "the spore to come back" sh -c "mesh status --json | grep -q '\"nodes_alive\":1'"
expect_rc 0 timeout 30 mesh wait "$w"
runs_after "$k" "$w"
store_check "$k" 2
store_check "$w" 2
[ "$(sql "SELECT held FROM batches WHERE id = $w")" = 0 ] || fail "batch $w is still stored held"

note "a waiting batch cancelled; what waits for it follows"
l=$(echo 3000 | mesh submit --handler sleep --lines - --label L)
m=$(echo x | mesh submit --handler echo --lines - --after "$l" 2> /dev/null)
n=$(echo x | mesh submit --handler echo --lines - --after "$m" 2> /dev/null)
expect_rc 0 mesh cancel "$m"
grep -q "batch $m: 1 task cancelled" "$T/out" || fail "cancel: $(cat "$T/out")"
expect_rc 1 timeout 30 mesh wait "$m"
expect_rc 1 timeout 30 mesh wait "$n"
grep -q "batch $n was cancelled: batch $m was cancelled" "$T/err" || fail "after a cancelled batch: $(cat "$T/err")"
is_state "$l" running || fail "batch $l: $(state_of "$l")"
expect_rc 0 mesh cancel "$l"

note "a map-reduce job after a batch (mapreduce.sh -a), and a batch after the job"
s2=$(echo 1500 | mesh submit --handler sleep --lines - --label S2)
printf 'b\na\nc\na\n' > "$T/words"
"$repo/scripts/mapreduce.sh" -m echo -r echo -R 2 -a "$s2" -o "$T/mr" "$T/words" > "$T/mr.out" 2> "$T/mr.err" &
mr_pid=$!
extra_pids+=("$mr_pid")
wait_until 10 "the job to be submitted" grep -q "^job [0-9]*:" "$T/mr.err"
job=$(sed -n 's/^job \([0-9]*\):.*/\1/p' "$T/mr.err" | head -1)
is_state "$job" waiting || fail "job $job: $(state_of "$job")"
after_job=$(echo x | mesh submit --handler echo --lines - --after "$job" --label after-job 2> /dev/null)
expect_rc 0 timeout 30 mesh wait "$after_job"
wait "$mr_pid" || fail "mapreduce.sh -a failed: $(cat "$T/mr.err")"
reduce=$(sql "SELECT next_batch FROM batches WHERE id = $job")
[ -n "$reduce" ] || fail "job $job has no reduce stage"
runs_after "$s2" "$job"
runs_after "$reduce" "$after_job"
printf 'a\na\nb\nc\n' | cmp -s - "$T/mr/merged" || fail "the job's output: $(cat "$T/mr/merged")"

note "hostile submits: 10,000 ids, its own id or a higher one, after on an appended chunk: refused and counted"
refused0=$(counter submits_after_refused)
latest=$(sql "SELECT MAX(id) FROM batches")
expect_rc 0 timeout 60 "$MESH_BUILD/tests/integration/hostile_client" "$MESH_NEXUS" "$MESH_NEXUS_KEY" "$MESH_KEY" \
  "afters:$latest" 0 0
[ "$(counter submits_after_refused)" -eq $((refused0 + 8)) ] || fail "submits_after_refused: $(counter submits_after_refused)"
[ "$(sql "SELECT COUNT(*) FROM batch_after WHERE batch > $latest")" -eq 1 ] || fail "a refused submit stored a dependency"
expect_rc 0 mesh status

note "at most --max-waiting batches wait at once"
echo "--max-waiting 1" > "$T/c/nexus-args"
"$cluster" kill "$T/c" nexus
"$cluster" restart-nexus "$T/c"
wait_until 20 "the spore to come back" sh -c "mesh status --json | grep -q '\"nodes_alive\":1'"
x=$(echo 20000 | mesh submit --handler sleep --lines - --label X)
y=$(echo 1 | mesh submit --handler echo --lines - --after "$x" 2> /dev/null)
is_state "$y" waiting || fail "batch $y: $(state_of "$y")"
expect_rc 1 mesh submit --handler echo --lines "$T/words" --after "$x"
grep -q "the nexus holds 1 batches waiting for others (its --max-waiting is 1)" "$T/err" || fail "over --max-waiting: $(cat "$T/err")"
expect_rc 0 mesh cancel "$x"
expect_rc 1 timeout 20 mesh wait "$y"
note "ok"
