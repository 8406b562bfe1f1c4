#!/usr/bin/env bash
# Three spores, 5,000 tasks of a few milliseconds; SIGKILL one spore mid-batch, then another,
# and start a replacement: every task ends with exactly one recorded result.
. "$(dirname "$0")/lib.sh"
up --spores 3 --nexus-args "--heartbeat 300ms"
batch=$(printf '4\n%.0s' $(seq 5000) | mesh submit --handler sleep --lines -)
wait_until 60 "1000 tasks done" at_least_done "$batch" 1000
"$cluster" kill "$T/c" spore-1
wait_until 60 "2500 tasks done" at_least_done "$batch" 2500
"$cluster" kill "$T/c" spore-2
"$cluster" add-spore "$T/c" spore-4
expect_rc 0 timeout 120 mesh wait "$batch"
store_check "$batch" 5000
[ "$(counter nodes_lost)" -ge 2 ] || fail "the nexus did not notice two lost spores"
note "requeued=$(counter tasks_requeued) duplicates=$(counter results_duplicate) lost=$(counter nodes_lost)"
