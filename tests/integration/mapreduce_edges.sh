#!/usr/bin/env bash
# Map-reduce edge cases, each with its documented behaviour (examples/wordcount/README.md):
# empty input, one huge line, binary bytes, keys with spaces.
. "$(dirname "$0")/lib.sh"
up --spores 2 --spore-args "--handlers $repo/examples/wordcount"
# The directory the README points at holds a README, sources and sub-directories too: one INFO
# line names them, no warning each (they are expected there).
grep -q "handler directory .*entries are not executable files, so not handlers: .*README.md" "$T/c/spore-1.log" ||
  fail "the non-programs are not named: $(grep 'handler directory' "$T/c/spore-1.log")"
! grep -q "WARN .*handler directory" "$T/c/spore-1.log" || fail "warnings for expected files: $(grep WARN "$T/c/spore-1.log")"
# Empty input: no map tasks, R empty parts.
: > "$T/empty"
expect_rc 0 timeout 60 mesh mapreduce --mapper mapper --reducer reducer --reducers 3 --output "$T/o1" "$T/empty"
for p in 0 1 2; do [ ! -s "$T/o1/part-0000$p" ] || fail "empty input gave output in part $p"; done
# One line larger than the chunk size: one chunk of its own; echo as mapper and reducer is the
# identity, so the output is the input line.
head -c 3000000 /dev/zero | tr '\0' 'x' > "$T/huge"
echo >> "$T/huge"
expect_rc 0 timeout 60 mesh mapreduce --mapper echo --reducer echo --reducers 1 --chunk-size 64K --output "$T/o2" "$T/huge"
cmp -s "$T/huge" "$T/o2/part-00000" || fail "the huge line did not come through intact"
# Binary bytes (everything but newline): records are lines, sorted bytewise.
for i in $(seq 1 200); do head -c 64 /dev/urandom | tr -d '\n'; echo; done > "$T/binary"
expect_rc 0 timeout 60 mesh mapreduce --mapper echo --reducer echo --reducers 3 --chunk-size 4K --merge --output "$T/o3" "$T/binary"
LC_ALL=C grep -av '^$' "$T/binary" | LC_ALL=C sort > "$T/binary.sorted"
LC_ALL=C sort "$T/o3/merged" | cmp -s - "$T/binary.sorted" || fail "binary records changed"
# Keys with spaces: the key is everything before the first TAB.
printf 'hello world\t1\nhello\t1\nhello world\t1\nhello world\t1\n' > "$T/spaces"
expect_rc 0 timeout 60 mesh mapreduce --mapper echo --reducer reducer --reducers 2 --merge --output "$T/o4" "$T/spaces"
printf 'hello\t1\nhello world\t3\n' > "$T/spaces.expected"
LC_ALL=C sort "$T/o4/merged" | cmp -s - "$T/spaces.expected" || fail "keys with spaces: $(cat "$T/o4/merged")"
# Several inputs, some only a few bytes long: each is chunked on its own and all are counted.
printf 'a b\n' > "$T/in1"; printf 'b c\n' > "$T/in2"; printf 'c a a\n' > "$T/in3"
expect_rc 0 timeout 60 mesh mapreduce --mapper mapper --reducer reducer --reducers 2 --merge --output "$T/o6" \
  "$T/in1" "$T/in2" "$T/in3"
printf 'a\t3\nb\t2\nc\t2\n' > "$T/multi.expected"
LC_ALL=C sort "$T/o6/merged" | cmp -s - "$T/multi.expected" || fail "three small inputs: $(cat "$T/o6/merged")"
# A non-empty output directory is refused before anything runs.
expect_rc 2 mesh mapreduce --mapper echo --reducer echo --output "$T/o4" "$T/spaces"
# A failing map stage stops the job with the reason, and no reduce stage starts.
printf '#!/bin/sh\nexit 3\n' > "$T/bad"
expect_rc 1 timeout 60 mesh mapreduce --mapper fail --reducer echo --attempts 1 --output "$T/o5" "$T/spaces"
grep -q "map tasks failed" "$T/err" || fail "map failure not explained: $(cat "$T/err")"
# Resuming a job with --job fetches the same result; --job with a batch that is not a job's id
# is refused at once (not after waiting for that batch to finish).
expect_rc 0 timeout 60 mesh mapreduce --mapper mapper --reducer reducer --reducers 2 --output "$T/o7" "$T/in1" "$T/in2" "$T/in3"
job=$(grep -o '^job [0-9]*' "$T/err" | cut -d' ' -f2)
[ -n "$job" ] || fail "mapreduce did not name its job: $(cat "$T/err")"
expect_rc 0 timeout 60 mesh mapreduce --job "$job" --output "$T/o8"
cat "$T"/o8/part-* | LC_ALL=C sort | cmp -s - "$T/multi.expected" || fail "resuming job $job: $(cat "$T"/o8/part-*)"
reduce=$(sql "SELECT next_batch FROM batches WHERE id = $job")
expect_rc 2 timeout 10 mesh mapreduce --job "$reduce" --output "$T/o9"
grep -q "is the reduce stage of a job" "$T/err" || fail "--job with a reduce stage: $(cat "$T/err")"
plain=$(printf '3000\n3000\n3000\n3000\n3000\n3000\n' | mesh submit --handler sleep --lines -)
start=$SECONDS
expect_rc 2 timeout 10 mesh mapreduce --job "$plain" --output "$T/o9"
grep -q "is not a map-reduce job" "$T/err" || fail "--job with a plain batch: $(cat "$T/err")"
[ $((SECONDS - start)) -le 2 ] || fail "--job with a running plain batch waited $((SECONDS - start)) s before refusing"
expect_rc 1 timeout 10 mesh mapreduce --job 99999 --output "$T/o9"
grep -q "no batch 99999" "$T/err" || fail "--job with an unknown batch: $(cat "$T/err")"
# A map stage whose output is over the nexus's --max-shuffle stops the job before any output is
# read (the nexus would hold it all in memory), says why, and stays stopped after a restart.
expect_rc 0 mesh cancel "$plain"
spores_back() { [ "$(mesh nodes --json | grep -c '"name"')" -eq 2 ]; }
echo "--max-shuffle 64K" > "$T/c/nexus-args"
"$cluster" kill "$T/c" nexus
"$cluster" restart-nexus "$T/c" > /dev/null
wait_until 30 "both spores to rejoin" spores_back
expect_rc 1 timeout 60 mesh mapreduce --mapper echo --reducer echo --reducers 1 --chunk-size 64K --output "$T/o10" "$T/huge"
grep -q "over the nexus's --max-shuffle of 65536: the reduce stage did not start" "$T/err" ||
  fail "a map output over --max-shuffle: $(cat "$T/err")"
[ "$(counter reduce_stages_too_large)" -eq 1 ] || fail "reduce_stages_too_large is $(counter reduce_stages_too_large)"
big=$(sql "SELECT MAX(id) FROM batches WHERE mr_stage = 1")
"$cluster" kill "$T/c" nexus
"$cluster" restart-nexus "$T/c" > /dev/null
wait_until 30 "both spores to rejoin" spores_back
[ "$(sql "SELECT next_batch IS NULL AND note LIKE '%--max-shuffle%' FROM batches WHERE id = $big")" -eq 1 ] ||
  fail "the stopped job $big changed at a restart"
# Within the limit, the same job runs.
echo "" > "$T/c/nexus-args"
"$cluster" kill "$T/c" nexus
"$cluster" restart-nexus "$T/c" > /dev/null
wait_until 30 "both spores to rejoin" spores_back
expect_rc 0 timeout 60 mesh mapreduce --mapper echo --reducer echo --reducers 1 --chunk-size 64K --output "$T/o11" "$T/huge"
cmp -s "$T/huge" "$T/o11/part-00000" || fail "the huge line did not come through after --max-shuffle was lifted"
note "empty, huge, binary, spaced keys, failures, --max-shuffle and --job behave as documented"
