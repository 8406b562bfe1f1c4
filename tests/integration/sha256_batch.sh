#!/usr/bin/env bash
# A nexus and two spores run 10,000 sha256 tasks; every digest matches one computed here.
. "$(dirname "$0")/lib.sh"
up --spores 2
seq 1 10000 > "$T/input"
batch=$(mesh submit --handler sha256 --lines "$T/input")
expect_rc 0 timeout 120 mesh wait "$batch"
mesh results "$batch" --json > "$T/results"
[ "$(wc -l < "$T/results")" -eq 10000 ] || fail "expected 10000 results, got $(wc -l < "$T/results")"
# Independent digests: one file per payload (the line without its newline), hashed by sha256sum.
mkdir "$T/p"
awk -v dir="$T/p" '{ f = dir "/" NR; printf "%s", $0 > f; close(f) }' "$T/input"
(cd "$T/p" && sha256sum $(seq 1 10000)) | awk '{ print $1 }' > "$T/expected"
grep -o '"output":"[0-9a-f]*"' "$T/results" | cut -d'"' -f4 > "$T/got"
cmp -s "$T/expected" "$T/got" || fail "digests differ: $(diff "$T/expected" "$T/got" | head -5)"
# In submission order, each exactly once, every status ok, spread over both spores.
grep -o '"index":[0-9]*' "$T/results" | cut -d: -f2 > "$T/indexes"
cmp -s "$T/indexes" <(seq 0 9999) || fail "results are not in submission order"
[ "$(grep -c '"status":"ok"' "$T/results")" -eq 10000 ] || fail "not every task succeeded"
for s in spore-1 spore-2; do grep -q "\"node\":\"$s\"" "$T/results" || fail "$s ran no task"; done
# The nexus encrypts for spores and decrypts from clients on two different I/O threads: after
# 32 MB went through it, each has used CPU.
mkdir "$T/big"
for i in $(seq 1 16); do head -c 2000000 /dev/zero > "$T/big/$i"; done
expect_rc 0 timeout 60 mesh submit --handler sha256 --wait --files "$T"/big/*
nexus_pid=$(pid_of nexus)
for t in /proc/"$nexus_pid"/task/*; do
  case $(cat "$t/comm") in ZMQbg/IO/*) echo "$(cat "$t/comm") $(awk '{ print $14 + $15 }' "$t/stat")" ;; esac
done > "$T/io_threads"
[ "$(wc -l < "$T/io_threads")" -eq 2 ] || fail "expected 2 ZeroMQ I/O threads in the nexus: $(cat "$T/io_threads")"
awk '$2 == 0 { exit 1 }' "$T/io_threads" || fail "an I/O thread of the nexus did no work: $(tr '\n' ' ' < "$T/io_threads")"
# `submit --wait` asks for the batch's progress with its sealing chunk: no Watch round trip.
watches=$(counter watch_requests)
expect_rc 0 timeout 60 mesh submit --handler sha256 --wait --lines "$T/input"
[ "$(counter watches_with_submit)" -ge 1 ] || fail "submit --wait did not ask for progress with its submit"
[ "$(counter watch_requests)" -eq "$watches" ] || fail "submit --wait sent a Watch of its own"
# One task at a time (the latency case): small built-ins run on the spore's loop, with the same
# results as on a worker thread; the spores say how many at their stop.
for word in alpha beta gamma; do
  b=$(printf '%s\n' "$word" | mesh submit --handler sha256 --lines - --wait)
  [ "$(mesh results "$b" | cut -f3)" = "$(printf '%s' "$word" | sha256sum | cut -d' ' -f1)" ] || fail "sha256 of $word is wrong"
  b=$(printf '%s\n' "$word" | mesh submit --handler echo --lines - --wait)
  [ "$(mesh results "$b" | cut -f3)" = "$word" ] || fail "echo of $word is wrong"
done
b=$(printf 'boom\n' | mesh submit --handler fail --lines - --wait 2>/dev/null || true)
{ mesh results "$b" --json || true; } | grep -q '"status":"failed","output":"","error":"boom ' || fail "the fail built-in's error is wrong: $(mesh results "$b" --json)"
"$cluster" stop "$T/c" spore-1
"$cluster" stop "$T/c" spore-2
inline=$(cat "$T/c/spore-1.log" "$T/c/spore-2.log" | grep -o 'tasks_run_inline=[0-9]*' | cut -d= -f2 | awk '{ s += $1 } END { print s + 0 }')
[ "$inline" -ge 6 ] || fail "the one-task batches did not run on the spores' loops (tasks_run_inline=$inline)"
# A clean stop sends nothing again: the results sent last are not counted as resent (they were
# counted at every stop before; the counter is for results sent again after a reconnect).
! grep -h 'results_resent=' "$T/c/spore-1.log" "$T/c/spore-2.log" || fail "a clean stop counted results as resent"
note "10000 digests match; submit --wait needed no Watch; $inline small tasks ran on a spore's loop"
