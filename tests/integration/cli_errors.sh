#!/usr/bin/env bash
# Bad input to the CLI gets one clear line and the documented exit code; the nexus keeps serving.
. "$(dirname "$0")/lib.sh"
up --spores 1 --nexus-args "--max-payload 1K"
expect_rc 2 mesh
expect_rc 0 mesh --help
grep -q "Exit codes" "$T/out" || fail "help does not explain exit codes"
expect_rc 2 mesh frobnicate
expect_rc 2 mesh submit --lines /dev/null
grep -q -- "--handler" "$T/err" || fail "no hint about --handler"
expect_rc 2 mesh submit --handler echo
expect_rc 2 mesh submit --handler echo --lines /no/such/file
grep -q "cannot read /no/such/file: No such file or directory" "$T/err" || fail "no reason: $(cat "$T/err")"
# A directory is not an empty input (it used to make a batch of no tasks, and exit 0).
expect_rc 2 mesh submit --handler echo --lines "$T"
grep -q "is a directory (--lines takes a file" "$T/err" || fail "a directory as --lines: $(cat "$T/err")"
# An empty input makes an empty batch, and says so.
expect_rc 0 mesh submit --handler echo --lines /dev/null
grep -q "has no tasks: /dev/null was empty" "$T/err" || fail "an empty batch not pointed out: $(cat "$T/err")"
expect_rc 2 mesh wait not-a-number
expect_rc 2 mesh submit --handler echo --priority 999 --lines -
expect_rc 1 sh -c 'echo x | mesh submit --handler no-such-handler --lines -'
grep -q "no live spore offers handler 'no-such-handler'" "$T/err" || fail "unknown handler not explained: $(cat "$T/err")"
expect_rc 1 sh -c 'echo "bad name!" > '"$T"'/h; echo x | mesh submit --handler "bad name!" --lines -'
head -c 5000 /dev/zero | tr '\0' 'a' > "$T/big"
expect_rc 1 mesh submit --handler echo --files "$T/big"
grep -q "over the nexus limit" "$T/err" || fail "payload limit not explained: $(cat "$T/err")"
# In a later chunk, the task is named by its index in the batch, not in its chunk.
{ seq 1 30000; cat "$T/big"; echo; } > "$T/mixed"
expect_rc 1 mesh submit --handler echo --lines "$T/mixed"
grep -q "task 30000 has a payload of 5000 bytes" "$T/err" || fail "wrong task index: $(cat "$T/err")"
# Its first 30,000 tasks were accepted already: the client cancels the batch, and says so; the
# batch then finishes (it used to stay open for good), as cancelled: exit 1, even if its 30,000
# tasks had all succeeded before the cancel (it used to read finished then, and exit 0).
grep -q "; batch [0-9]* was cancelled: its first 30000 tasks were accepted before this failure\$" "$T/err" ||
  fail "the cancel of the incomplete batch not reported: $(cat "$T/err")"
batch=$(grep -o 'batch [0-9]* was cancelled' "$T/err" | awk '{ print $2 }')
expect_rc 1 timeout 30 mesh wait "$batch" --json
grep -q "{\"batch\":$batch,\"total\":30000,.*\"finished\":true,\"state\":\"cancelled\"}" "$T/out" ||
  fail "batch $batch did not finish as cancelled: $(cat "$T/out")"
expect_rc 1 mesh wait 999999
grep -q "no batch 999999" "$T/err" || fail "unknown batch not explained"
expect_rc 1 mesh task 999999
grep -q "no task 999999 (task ids run across batches" "$T/err" || fail "unknown task not explained: $(cat "$T/err")"
expect_rc 3 env MESH_NEXUS=tcp://127.0.0.1:1 mesh status --timeout 1s
grep -q "cannot reach the nexus" "$T/err" || fail "unreachable nexus not explained: $(cat "$T/err")"
expect_rc 2 env MESH_KEY= mesh status
expect_rc 2 env MESH_NEXUS=127.0.0.1 mesh status
grep -q "takes tcp://HOST:PORT, the nexus's client port" "$T/err" || fail "a bare host as MESH_NEXUS: $(cat "$T/err")"
expect_rc 3 env MESH_NEXUS=tcp://no-such-host.invalid:7701 mesh status --timeout 1s
grep -q "cannot resolve host 'no-such-host.invalid'" "$T/err" || fail "a host that does not resolve: $(cat "$T/err")"
# Commands without arguments refuse one (a typo for another command, say) instead of ignoring it.
for c in status nodes bundles; do
  expect_rc 2 mesh "$c" 7
  grep -q "\`mesh $c\` takes no arguments, not '7'" "$T/err" || fail "mesh $c 7 not refused: $(cat "$T/err")"
done
expect_rc 2 mesh keys list 7
# An unknown keys subcommand is named as such, wherever it runs (it used to ask for --data-dir).
expect_rc 2 env MESH_DATA_DIR= mesh keys frob
grep -q "unknown keys subcommand 'frob'" "$T/err" || fail "mesh keys frob not explained: $(cat "$T/err")"
# Nothing published: a line says so, instead of an empty output.
expect_rc 0 mesh bundles
grep -q "no bundle has been published" "$T/out" || fail "an empty mesh bundles says nothing: $(cat "$T/out")"
expect_rc 0 mesh bundles --json
[ ! -s "$T/out" ] || fail "mesh bundles --json printed something without bundles: $(cat "$T/out")"
expect_rc 2 mesh status --timeout 0
expect_rc 2 mesh submit --handler echo --task-timeout -1s --lines /dev/null
grep -q "cannot be negative" "$T/err" || fail "a negative duration not explained: $(cat "$T/err")"
# One nexus and one spore per data dir: a second one exits 1 and names the process in the way.
expect_rc 1 timeout 20 "$bin/nexus" --data-dir "$T/c/nexus" --bind-node tcp://127.0.0.1:0 \
  --bind-client tcp://127.0.0.1:0 --bind-events tcp://127.0.0.1:0
grep -q "another nexus (process $(pid_of nexus)) is using $T/c/nexus" "$T/err" ||
  fail "a second nexus on one data dir not refused: $(cat "$T/err")"
expect_rc 1 timeout 20 "$bin/spore" --data-dir "$T/c/spore-1" --nexus "$MESH_NEXUS" --nexus-key "$MESH_NEXUS_KEY"
grep -q "another spore (process $(pid_of spore-1)) is using" "$T/err" || fail "a second spore on one data dir not refused: $(cat "$T/err")"
[ "$(mesh nodes --json | grep -c '"name"')" -eq 1 ] || fail "the first spore is gone"
# A config mistake exits 2 (the systemd units do not restart on 2) before anything is written:
# a --nexus-key or --trust file that cannot be read, a --nexus that is not tcp://HOST:PORT.
expect_rc 2 timeout 20 "$bin/spore" --data-dir "$T/bad-spore" --nexus "$MESH_NEXUS" --nexus-key "$T/no-such.pub"
grep -q -- "--nexus-key: cannot open $T/no-such.pub" "$T/err" || fail "a missing --nexus-key not explained: $(cat "$T/err")"
[ ! -e "$T/bad-spore/spore.key" ] || fail "a spore with a bad --nexus-key made a key pair"
expect_rc 2 timeout 20 "$bin/spore" --data-dir "$T/bad-spore" --nexus "$MESH_NEXUS" --nexus-key "$MESH_NEXUS_KEY" \
  --trust "$T/no-such.pub"
expect_rc 2 timeout 20 "$bin/spore" --data-dir "$T/bad-spore" --nexus nexus-host:7700 --nexus-key "$MESH_NEXUS_KEY"
grep -q "tcp://HOST:PORT" "$T/err" || fail "a malformed --nexus not explained: $(cat "$T/err")"
expect_rc 2 timeout 20 "$bin/nexus" --data-dir "$T/bad-nexus" --bind-node tcp://127.0.0.1:0 \
  --bind-client tcp://127.0.0.1:0 --bind-events tcp://127.0.0.1:0 --trust "$T/no-such.pub"
expect_rc 2 env MESH_NEXUS= mesh status
# Failed tasks: exit 1 from wait and results, with the error recorded.
batch=$(printf 'broken\n' | mesh submit --handler fail --attempts 1 --lines -)
expect_rc 1 timeout 30 mesh wait "$batch"
expect_rc 1 mesh results "$batch" --json
grep -q '"status":"failed"' "$T/out" || fail "failure not recorded: $(cat "$T/out")"
grep -q 'broken' "$T/out" || fail "the error text is missing: $(cat "$T/out")"
# Non-UTF-8 output is base64 in JSON.
batch=$(printf '\xff\xfe\n' | mesh submit --handler echo --lines -)
expect_rc 0 timeout 30 mesh wait "$batch"
mesh results "$batch" --json | grep -q '"output_base64":"//4="' || fail "binary output not base64"
# An empty input is an empty batch that finishes at once.
batch=$(mesh submit --handler echo --lines /dev/null)
expect_rc 0 timeout 30 mesh wait "$batch"
# Results of a batch still running: what exists is printed, exit 4 says it is not all of it.
batch=$(printf '0\n5000\n' | mesh submit --handler sleep --lines -)
wait_until 20 "the quick task of batch $batch to be recorded" sh -c "mesh results $batch 2>/dev/null | grep -q ."
expect_rc 4 mesh results "$batch"
[ "$(wc -l < "$T/out")" -eq 1 ] || fail "the result so far was not printed: $(cat "$T/out")"
grep -q "batch $batch has not finished" "$T/err" || fail "an unfinished batch not explained: $(cat "$T/err")"
expect_rc 0 timeout 30 mesh wait "$batch"
expect_rc 0 mesh results "$batch"
[ "$(wc -l < "$T/out")" -eq 2 ] || fail "a finished batch's results are not all there: $(cat "$T/out")"
expect_rc 0 mesh status
note "CLI errors are clear and the nexus keeps serving"
