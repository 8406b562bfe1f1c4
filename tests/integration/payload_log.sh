#!/usr/bin/env bash
# Payloads of 1 KiB or more live in the payload log (nexus/payloads/*.seg), not in the task rows:
# they survive a SIGKILL of the nexus and run after the restart with the right bytes; a task
# whose payload segment was deleted fails with the reason instead of running on wrong input.
. "$(dirname "$0")/lib.sh"
up --spores 1
mkdir "$T/in"
for i in $(seq 1 120); do head -c $((1024 + i * 37)) /dev/urandom > "$T/in/p$i"; done
echo tiny > "$T/in/small"
# Nobody has the tag yet: the tasks stay queued, stored but not run.
batch=$(mesh submit --handler sha256 --requires later --files "$T"/in/*)
[ "$(sql "SELECT COUNT(*) FROM tasks WHERE batch = $batch AND payload_segment IS NOT NULL")" -eq 120 ] ||
  fail "the 120 large payloads are not in the payload log"
[ "$(sql "SELECT length(payload) FROM tasks WHERE batch = $batch AND payload_segment IS NULL")" -eq 5 ] ||
  fail "the small payload is not in its row"
ls "$T/c/nexus/payloads/"*.seg > /dev/null || fail "no payload segment in the data dir"
"$cluster" kill "$T/c" nexus
"$cluster" restart-nexus "$T/c"
# Recovery read the segment; it must not keep it open (a deleted segment's space would stay used).
open_segments=$(ls -l "/proc/$(pid_of nexus)/fd" | grep -c '\.seg$' || true)
[ "$open_segments" -eq 0 ] || fail "the nexus keeps $open_segments payload segments open after recovery"
"$cluster" add-spore "$T/c" later-box --tags later > /dev/null
expect_rc 0 timeout 60 mesh wait "$batch" --quiet
store_check "$batch" 121
# Every digest is the digest of the file that was submitted (results are in file order).
mesh results "$batch" | cut -f3 > "$T/got"
for f in "$T"/in/*; do sha256sum "$f" | cut -d' ' -f1; done > "$T/want"
cmp -s "$T/got" "$T/want" || fail "digests after the restart differ: $(diff "$T/want" "$T/got" | head -4)"

# A deleted segment: the stored tasks fail with the reason, and the nexus keeps serving.
lost=$(mesh submit --handler sha256 --requires nobody --files "$T"/in/p1 "$T"/in/p2 "$T"/in/small)
"$cluster" kill "$T/c" nexus
seg=$(sql "SELECT DISTINCT payload_segment FROM tasks WHERE batch = $lost AND payload_segment IS NOT NULL")
[ -n "$seg" ] || fail "the second batch has no payload in the log"
rm "$T/c/nexus/payloads/$(printf '%08d' "$seg").seg"
"$cluster" restart-nexus "$T/c"
wait_until 20 "the two tasks with lost payloads to fail" sh -c "mesh results $lost --json 2>/dev/null | grep -c 'payload was lost' | grep -qx 2"
[ "$(counter payloads_lost)" -eq 2 ] || fail "payloads_lost is $(counter payloads_lost), expected 2"
grep -q "cannot run again: payload segment" "$T/c/nexus.log" || fail "the nexus did not log the lost payloads"
wait_until 30 "the restarted nexus to run new work" sh -c "echo ok | mesh submit --handler echo --lines - --wait"
note "large payloads come back from the payload log after a crash; a lost one fails its task"
