#!/usr/bin/env bash
# SIGSTOP a spore mid-batch (connected but silent): its tasks are re-queued and done elsewhere;
# SIGCONT it: its late results are dropped as duplicates, counted, not recorded.
. "$(dirname "$0")/lib.sh"
up --spores 2 --nexus-args "--heartbeat 300ms"
batch=$(printf '5\n%.0s' $(seq 2000) | mesh submit --handler sleep --lines -)
wait_until 60 "300 tasks done" at_least_done "$batch" 300
victim=$(pid_of spore-1)
kill -STOP "$victim"
stopped=1
trap 'if [ -n "${stopped:-}" ]; then kill -CONT "$victim" 2>/dev/null || true; fi; cleanup' EXIT
expect_rc 0 timeout 120 mesh wait "$batch"
store_check "$batch" 2000
[ "$(counter nodes_lost)" -ge 1 ] || fail "the silent spore was not declared lost"
before=$(counter results_duplicate)
kill -CONT "$victim"
stopped=
wait_until 30 "the late results to be dropped as duplicates" sh -c "[ \$(mesh status --json | grep -o '\"results_duplicate\":[0-9]*' | cut -d: -f2) -gt $before ]"
store_check "$batch" 2000
wait_until 30 "the stopped spore to rejoin" sh -c "[ \$(mesh nodes --json | grep -c spore-1) -eq 1 ]"
batch2=$(seq 1 200 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 60 mesh wait "$batch2"
note "duplicates dropped: $(counter results_duplicate)"
