#!/usr/bin/env bash
# The nexus's disk fills up while a batch runs. Its data dir is a 16 MiB tmpfs, mounted in a
# mount namespace of this test's own (nothing is mounted on the host). It checks: a submit that
# cannot be stored is refused with a clear error and nothing of it is accepted; the nexus keeps
# serving; the running batch's results wait in memory and are written once space is back; every
# task of it has exactly one result; new submits work again. Then the same with payloads of 1 KiB
# or more, which go to the payload log. Skips (77) where a mount namespace cannot be made.
set -euo pipefail
. "$(dirname "$0")/mount_ns.sh" store_full
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/c/nexus"
mount -t tmpfs -o size=16m tmpfs "$T/c/nexus"
at_exit="umount '$T/c/nexus'"
up --spores 2
fill() { head -c 64m /dev/zero > "$T/c/nexus/filler" 2> /dev/null || true; }

# A batch that runs for a few seconds: 80 tasks of 100 ms on 4 slots.
for i in $(seq 1 80); do echo 100; done > "$T/sleeps"
a=$(mesh submit --handler sleep --lines "$T/sleeps")
fill
[ "$(df --output=avail "$T/c/nexus" | tail -1)" -lt 64 ] || fail "the tmpfs did not fill"
printf 'x\ny\n' > "$T/small"
early=$(counter tasks_dispatched_early)
expect_rc 1 mesh submit --handler echo --lines "$T/small"
grep -q "could not store the batch" "$T/err" || fail "unclear refusal: $(cat "$T/err")"
# A whole small batch is dispatched before its commit: refused, it is withdrawn, results and all.
[ "$(counter tasks_dispatched_early)" -eq $((early + 2)) ] || fail "the small batch was not dispatched before its commit"
[ "$(counter tasks_withdrawn)" -eq 2 ] || fail "the refused batch's 2 tasks were not withdrawn"
wait_until 20 "the nexus to count a failed write" sh -c "[ \$(. '$T/c/env' && mesh status --json | grep -o '\"store_errors\":[0-9]*' | cut -d: -f2) -ge 1 ]"
# Still serving while full: status answers, the running batch does not finish (its results
# cannot be committed, so it must not say finished).
expect_rc 0 mesh status
sleep 3
row=$(mesh status --json | grep -o "\"batch\":$a,[^}]*" || true)
[ -n "$row" ] || fail "batch $a vanished from the nexus while the disk was full"
grep -q '"finished":false' <<< "$row" || fail "batch $a says finished though its results cannot be stored: $row"
[ "$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $a")" -lt 80 ] || fail "all results of batch $a were stored on a full disk?"
kill -0 "$(pid_of nexus)" || fail "the nexus died on a full disk"
rm -f "$T/c/nexus/filler"
expect_rc 0 timeout 60 mesh wait "$a"
store_check "$a" 80
[ "$(sql "SELECT COUNT(*) FROM results WHERE task NOT IN (SELECT id FROM tasks)")" -eq 0 ] ||
  fail "a result of the withdrawn batch was stored"
b=$(mesh submit --handler echo --lines "$T/small" --wait)
[ "$(mesh results "$b" | cut -f3 | tr '\n' ' ')" = "x y " ] || fail "a batch after the disk came back is wrong"

# Payloads of 2 KiB go to the payload log: the same, with the log's writes failing.
mkdir "$T/p"
for i in $(seq 1 40); do head -c 2048 /dev/urandom > "$T/p/$i"; done
fill
expect_rc 1 mesh submit --handler sha256 --files "$T"/p/*
grep -q "could not store the batch" "$T/err" || fail "unclear refusal (payload log): $(cat "$T/err")"
rm -f "$T/c/nexus/filler"
c=$(mesh submit --handler sha256 --files "$T"/p/* --wait)
store_check "$c" 40
(cd "$T/p" && sha256sum -- *) | awk '{ print $1 }' > "$T/expected"
mesh results "$c" | cut -f3 > "$T/got"
cmp -s "$T/expected" "$T/got" || fail "digests after the payload log's failure are wrong"
kill -0 "$(pid_of nexus)" || fail "the nexus died"
# Every failed write is counted, but the log says so once a minute per kind, not per write.
errors=$(counter store_errors)
[ "$errors" -ge 3 ] || fail "expected several failed writes, counted $errors"
for what in 'a write to' 'group commit of' 'WAL checkpoint'; do
  lines=$(grep -c "$what" "$T/c/nexus.log" || true)
  [ "$lines" -le 2 ] || fail "'$what' logged $lines times for $errors failed writes"
done
note "store_errors=$(counter store_errors); refused while full, every task of the running batch stored after"
