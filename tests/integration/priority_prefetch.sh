#!/usr/bin/env bash
# --priority holds when tasks are prefetched: after a warm-up of short tasks (which makes the
# spore look fast), a long low-priority batch is not handed out all at once, so a high-priority
# batch submitted while it runs is assigned at the next free room, before most of the low one.
# The order is read from the assign times the nexus recorded, not from timings.
. "$(dirname "$0")/lib.sh"
up --spores 1 --slots 2
expect_rc 0 timeout 60 mesh submit --handler echo --lines <(seq 1 200) --wait
low=$(printf '200\n%.0s' $(seq 40) | mesh submit --handler sleep --priority 0 --lines -)
wait_until 30 "the low batch to start" at_least_done "$low" 1
high=$(printf '10\n10\n' | mesh submit --handler sleep --priority 200 --lines -)
expect_rc 0 timeout 120 mesh wait "$high"
expect_rc 0 timeout 120 mesh wait "$low"
store_check "$low" 40
store_check "$high" 2
# Low tasks assigned after the last high one: all but the few before it (0 when the whole low
# batch was prefetched at once).
after=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $low
             AND r.assigned_ms > (SELECT MAX(r2.assigned_ms) FROM results r2 JOIN tasks t2 ON t2.id = r2.task
                                  WHERE t2.batch = $high)")
[ "$after" -ge 20 ] || fail "only $after of 40 low-priority tasks were assigned after the high-priority ones"
note "$after of 40 low-priority tasks were assigned after the high-priority batch"
