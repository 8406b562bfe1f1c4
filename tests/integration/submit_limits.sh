#!/usr/bin/env bash
# Payloads too large for the nexus are refused by the client at once, before anything is sent,
# with the limit and the option that raises it (a message over --max-frame used to be dropped
# by libzmq unanswered, and the client waited out its timeout). A submit that fails after its
# batch was opened cancels the batch, which then finishes as cancelled instead of staying open.
. "$(dirname "$0")/lib.sh"
up --spores 1 --nexus-args "--max-frame 8M --max-payload 3M"
ms() { date +%s%3N; }
batches() { sql "SELECT COUNT(*) FROM batches"; }
limit_text="over the nexus limit of 3145728 (the nexus's --max-payload, which can be raised to half its --max-frame of 8388608)"

# Ordinary submits run: small lines, and files of which one (2 MiB) makes the client ask the
# nexus's limits before it sends it.
printf 'a\nb\n' > "$T/small"
head -c $((2 << 20)) /dev/zero | tr '\0' 'm' > "$T/medium"
expect_rc 0 timeout 60 mesh submit --handler echo --lines "$T/small" --wait
expect_rc 0 timeout 60 mesh submit --handler sha256 --files "$T/small" "$T/medium" --results
grep -q "^1	ok	$(sha256sum "$T/medium" | cut -d' ' -f1)\$" "$T/out" || fail "the 2 MiB file did not run: $(head -c 300 "$T/out")"
mesh status --json | grep -q '"max_payload_bytes":3145728,"max_frame_bytes":8388608' || fail "mesh status does not show the limits"

# A file over --max-frame, and one between --max-payload and --max-frame, after a small one:
# refused within a fraction of the 20 s timeout, the file and its task named, nothing stored,
# nothing sent (the nexus refused nothing itself).
head -c $((9 << 20)) /dev/zero > "$T/huge.bin"
head -c $((4 << 20)) /dev/zero > "$T/big.bin"
before=$(batches)
refused=$(counter submits_refused)
for f in huge.bin big.bin; do
  t0=$(ms)
  expect_rc 1 mesh submit --handler echo --timeout 20s --files "$T/small" "$T/$f"
  took=$(($(ms) - t0))
  [ "$took" -lt 3000 ] || fail "the refusal of $f took $took ms"
  grep -qF "task 1 ($T/$f) has a payload of $(stat -c %s "$T/$f") bytes, $limit_text: nothing was submitted" "$T/err" ||
    fail "$f: refusal not explained: $(cat "$T/err")"
done
# A line over --max-frame in the first chunk: refused before the batch is opened.
{ echo 1; head -c $((9 << 20)) /dev/zero | tr '\0' 'h'; echo; } > "$T/hugeline"
t0=$(ms)
expect_rc 1 mesh submit --handler echo --timeout 20s --lines "$T/hugeline"
[ $(($(ms) - t0)) -lt 3000 ] || fail "the refusal of a huge line took too long"
grep -qF "task 1 has a payload of 9437184 bytes, $limit_text: nothing was submitted" "$T/err" || fail "huge line: $(cat "$T/err")"
grep -q "cancel" "$T/err" && fail "a refusal before the batch was opened mentions a cancel: $(cat "$T/err")"
[ "$(batches)" -eq "$before" ] || fail "a refused submit stored a batch"
[ "$(counter submits_refused)" -eq "$refused" ] || fail "an oversized payload reached the nexus"
[ "$(counter bad_frames)" -eq 0 ] || fail "the nexus dropped frames"

# A map-reduce whose one line (a chunk of its own) is over the limit: refused before the job.
{ head -c $((4 << 20)) /dev/zero | tr '\0' 'w'; echo; } > "$T/longline"
expect_rc 1 mesh mapreduce --mapper echo --reducer echo --reducers 1 --output "$T/mr" "$T/longline"
grep -qF "task 0 (a chunk of $T/longline) has a payload of 4194305 bytes, $limit_text: give a smaller --chunk-size" "$T/err" ||
  fail "map-reduce refusal not explained: $(cat "$T/err")"
[ "$(batches)" -eq "$before" ] || fail "a refused map-reduce stored a batch"

# 30,000 sleeps of 30 s, then a line over --max-payload: two chunks are accepted before the
# client reads that line, so it cancels the batch and says so.
{ awk 'BEGIN { for (i = 0; i < 30000; i++) print 30000 }'; head -c $((4 << 20)) /dev/zero | tr '\0' '7'; echo; } > "$T/mixed"
t0=$(ms)
expect_rc 1 mesh submit --handler sleep --timeout 20s --lines "$T/mixed"
[ $(($(ms) - t0)) -lt 10000 ] || fail "the failed submit took $(($(ms) - t0)) ms"
grep -qF "task 30000 has a payload of 4194304 bytes, $limit_text" "$T/err" || fail "later line: $(cat "$T/err")"
grep -q "; batch [0-9]* was cancelled: its first 20000 tasks were accepted before this failure\$" "$T/err" ||
  fail "the cancel of the incomplete batch not reported: $(cat "$T/err")"
b=$(grep -o 'batch [0-9]* was cancelled' "$T/err" | awk '{ print $2 }')
# It finishes as cancelled: mesh wait, mesh status and the store agree.
expect_rc 1 timeout 30 mesh wait "$b" --json
grep -q "{\"batch\":$b,\"total\":20000,\"succeeded\":0,\"failed\":0,\"cancelled\":20000,\"finished\":true,\"state\":\"cancelled\"}" "$T/out" ||
  fail "batch $b did not finish as cancelled: $(cat "$T/out")"
mesh status | awk -v b="$b" '$1 == b { print $NF }' | grep -qx cancelled || fail "mesh status does not show batch $b cancelled"
[ "$(sql "SELECT sealed, cancelled_ms IS NOT NULL, finished_ms IS NOT NULL, total FROM batches WHERE id = $b")" = "1|1|1|20000" ] ||
  fail "batch $b in the store: $(sql "SELECT * FROM batches WHERE id = $b")"
store_check "$b" 20000
# The spore's slots are free again: an ordinary submit runs.
expect_rc 0 timeout 60 mesh submit --handler echo --lines "$T/small" --wait
note "too-large payloads refused at once; an incomplete batch is cancelled and finishes"
