#!/usr/bin/env bash
# Later parts of work fail to be stored while earlier ones were: the nexus's payload log (every
# payload of 1 KiB or more) is an 8 MiB tmpfs of its own, mounted in a mount namespace of this
# test's own, that fills up while SQLite still has room. It checks:
# 1. a batch whose sealing chunk (or a middle chunk, with later ones behind it) cannot be stored
#    ends: the submit fails with a clear error and cancels the batch, `mesh wait` returns
#    (cancelled), the row is sealed at the tasks stored, and so it stays after a SIGKILL and a
#    restart of the nexus; a row an older release left cancelled but unsealed is sealed then;
# 2. a map-reduce job whose reduce stage cannot be stored waits (its map row links no reduce
#    batch, so a restart finds it again) and completes with the right answer once space is back,
#    across a restart of the nexus in between.
# Skips (77) where a mount namespace cannot be made.
set -euo pipefail
. "$(dirname "$0")/mount_ns.sh" store_full_stages
. "$(dirname "$0")/lib.sh"
pl="$T/c/nexus/payloads"
mkdir -p "$pl"
mount -t tmpfs -o size=8m tmpfs "$pl"
at_exit="umount '$pl'"
"$MESH_BUILD/examples/make-corpus" --bytes 400000 > "$T/corpus.txt"
mkdir -p "$T/handlers"
cp "$repo"/examples/wordcount/{mapper,combiner,reducer} "$T/handlers/"
# Map tasks that wait (at most 60 s) until the test lets them go.
printf '#!/bin/sh\ni=0\nwhile [ ! -e %s/maps-go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done\nexec %s/handlers/mapper\n' \
  "$T" "$T" > "$T/handlers/held-mapper"
chmod 755 "$T"/handlers/*
up --spores 2 --spore-args "--handlers $T/handlers"
fill() {
  head -c 64m /dev/zero > "$pl/filler" 2> /dev/null || true
  [ "$(df --output=avail "$pl" | tail -1)" -lt 64 ] || fail "the payload tmpfs did not fill"
}

# Payloads of 2048 bytes: a chunk ends at 1 MiB, so at 512 of them, and every one goes to the
# payload log. The client reads two chunks before it sends the first; the input then pauses
# (at most 60 s) until the test has filled the disk.
awk 'BEGIN { pad = sprintf("%2042s", ""); gsub(/ /, "x", pad); for (i = 0; i < 2048; i++) printf "%06d%s\n", i, pad }' \
  > "$T/lines"
head -n 1024 "$T/lines" > "$T/part1"
tail -n 1024 "$T/lines" > "$T/part2"
# broken_batch NAME REST: submits part1, then REST (a file, or nothing) once the disk is full.
# The chunk after the first fails; the batch must end cancelled with the first chunk's 512 tasks.
# Sets $batch.
first_chunk() { [ "$(sql "SELECT COUNT(*) FROM tasks WHERE batch = (SELECT MAX(id) FROM batches) AND batch > $1")" -eq 512 ]; }
broken_batch() {
  local name=$1 rest=$2 pid rc before
  before=$(sql "SELECT COALESCE(MAX(id), 0) FROM batches")
  rm -f "$T/go"
  {
    cat "$T/part1"
    i=0
    while [ ! -e "$T/go" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
    [ -z "$rest" ] || cat "$rest"
  } | mesh submit --handler echo --lines - > "$T/$name.out" 2> "$T/$name.err" &
  pid=$!
  extra_pids+=("$pid")
  wait_until 30 "$name: the first chunk to be stored" first_chunk "$before"
  batch=$(sql "SELECT MAX(id) FROM batches")
  fill
  touch "$T/go"
  set +e
  wait "$pid"
  rc=$?
  set -e
  [ "$rc" -eq 1 ] || fail "$name: the submit exited $rc, expected 1: $(cat "$T/$name.err")"
  grep -q "could not store tasks 512-1023 of batch $batch" "$T/$name.err" || fail "$name: unclear error: $(cat "$T/$name.err")"
  grep -q "batch $batch was cancelled: its first 512 tasks were accepted" "$T/$name.err" ||
    fail "$name: the batch was not cancelled: $(cat "$T/$name.err")"
  # It ends although the disk is still full (its rows and results go to SQLite).
  expect_rc 1 timeout 20 mesh wait "$batch"
  grep -q "batch $batch was cancelled: its tasks from index 512 on could not be stored" "$T/err" ||
    fail "$name: mesh wait said: $(cat "$T/err")"
  [ "$(sql "SELECT held, note LIKE 'its tasks from index 512 on could not be stored%' FROM batches WHERE id = $batch")" = "0|1" ] ||
    fail "$name: the batch's note: $(sql "SELECT held, note FROM batches WHERE id = $batch")"
  mesh batches --json > "$T/batches"
  grep -q "{\"batch\":$batch,.*\"state\":\"cancelled\"" "$T/batches" || fail "$name: mesh batches: $(grep "\"batch\":$batch," "$T/batches")"
  [ "$(sql "SELECT sealed, total, cancelled_ms IS NOT NULL, finished_ms IS NOT NULL FROM batches WHERE id = $batch")" = "1|512|1|1" ] ||
    fail "$name: row of batch $batch: $(sql "SELECT sealed, total, cancelled_ms, finished_ms FROM batches WHERE id = $batch")"
  store_check "$batch" 512
  rm -f "$pl/filler"
}
broken_batch sealing ""          # the sealing chunk fails
a=$batch
broken_batch middle "$T/part2"   # chunk 2 of 4 fails, 3 and 4 are behind it
b=$batch
[ "$(counter batches_broken)" -eq 2 ] || fail "expected 2 broken batches, counted $(counter batches_broken)"
"$cluster" kill "$T/c" nexus
# An older release left such a batch cancelled but never sealed (and so never finished): the
# restart seals it at its stored total, and it finishes as cancelled.
sql "UPDATE batches SET sealed = 0, finished_ms = NULL WHERE id = $a"
"$cluster" restart-nexus "$T/c"
grep -q "batch $a was cancelled but never sealed" "$T/c/nexus.log" || fail "the restart did not seal batch $a"
for x in "$a" "$b"; do
  expect_rc 1 timeout 20 mesh wait "$x"
  grep -Eq "batch $x was cancelled: ([0-9]* of its 512 tasks succeeded|its tasks from index 512 on could not be stored)" "$T/err" ||
    fail "after the restart, mesh wait $x said: $(cat "$T/err")"
  store_check "$x" 512
done
grep -q "recovered 1 unfinished batches" "$T/c/nexus.log" || fail "the restart did not recover batch $a alone"
[ "$(sql "SELECT sealed, total FROM batches WHERE id = $a")" = "1|512" ] || fail "batch $a was not sealed at its 512 tasks"
spores_back() { mesh status --json | grep -q '"nodes_alive":2'; }
wait_until 60 "the spores to come back" spores_back

# 2. The reduce stage of a job cannot be stored: its map tasks were stored before the disk
# filled, and they run once it is full.
mesh mapreduce --mapper held-mapper --combiner combiner --reducer reducer --reducers 3 --chunk-size 64K \
  --output "$T/wc" --merge --quiet "$T/corpus.txt" > "$T/mr.out" 2> "$T/mr.err" &
client=$!
extra_pids+=("$client")
started() { grep -q "^job " "$T/mr.err" || ! kill -0 "$client"; }
wait_until 60 "the job to start" started
grep -q "^job " "$T/mr.err" || fail "mesh mapreduce ended before its job started: $(cat "$T/mr.err")"
job=$(sed -n 's/^job \([0-9]*\):.*/\1/p' "$T/mr.err")
[ "$(sql "SELECT sealed FROM batches WHERE id = $job")" = 1 ] || fail "job $job is not sealed"
fill
touch "$T/maps-go"
# Refused, or (the bug this guards against) linked to a reduce batch that was never stored.
refused_or_linked() { [ -n "$(sql "SELECT next_batch FROM batches WHERE id = $job")" ] || [ "$(counter reduce_stages_refused)" -ge 1 ]; }
wait_until 60 "the reduce stage to be refused" refused_or_linked
[ -n "$(sql "SELECT finished_ms FROM batches WHERE id = $job")" ] || fail "the map stage of job $job is not finished"
[ -z "$(sql "SELECT next_batch FROM batches WHERE id = $job")" ] || fail "job $job links a reduce batch that was never stored"
kill -0 "$client" || fail "mesh mapreduce gave up while the reduce stage waited: $(cat "$T/mr.err")"
# A restart (the disk still full) finds the job and tries again.
"$cluster" kill "$T/c" nexus
"$cluster" restart-nexus "$T/c"
grep -q "starting the reduce stage of job $job" "$T/c/nexus.log" || fail "the restarted nexus did not find job $job"
wait_until 30 "the reduce stage to be refused again" sh -c "[ \$(. '$T/c/env' && mesh status --json | grep -o '\"reduce_stages_refused\":[0-9]*' | cut -d: -f2) -ge 1 ]"
rm -f "$pl/filler"
wait_until 90 "mesh mapreduce to end" sh -c "! kill -0 $client"
check_word_count "$client" "the answer is wrong after the reduce stage was refused"
[ "$(counter reduce_stages_reused)" -ge 1 ] || fail "a retry of the reduce stage read the map outputs again"
reduce=$(sql "SELECT next_batch FROM batches WHERE id = $job")
[ -n "$reduce" ] || fail "job $job has no reduce batch at the end"
store_check "$reduce" 3
[ "$(counter reduce_stage_retries)" -ge 1 ] || fail "the reduce stage was not tried again"
note "two broken batches ended cancelled; job $job's reduce stage (batch $reduce) was stored after $(counter reduce_stage_retries) retries"
