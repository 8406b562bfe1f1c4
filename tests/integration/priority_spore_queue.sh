#!/usr/bin/env bash
# --priority holds on the spore too: a high-priority task sent to a spore that already holds
# queued low-priority tasks starts before them, as soon as the task it runs has ended, even
# when they sit in the run a worker took. One slot; a low batch whose first 100 tasks take no
# time (so its prefetch grows large) and whose last 6 take 500 ms each: those 6 are all sent
# to the spore at once, and the high task comes while the first of them runs (it may be given
# to the spore at once: the low tasks count against its room only up to the slots, and the 500 ms
# ones were sent while their batch's average was that of the 0 ms ones, so they count as short:
# the slot is not held by a long task, which would leave the spore no prefetch). The order is
# read from the assign and start times the nexus recorded, not from durations.
. "$(dirname "$0")/lib.sh"
up --spores 1 --slots 1
{ for _ in $(seq 100); do echo 0; done; for _ in $(seq 6); do echo 500; done; } > "$T/low"
low=$(mesh submit --handler sleep --priority 0 --lines "$T/low")
# The whole low batch has been sent to the spore when the nexus has none of it queued (the
# short ones take no time, so its prefetch is large): the long ones are on the spore, queued
# there or in the run its worker took, not in the nexus, which counts them in flight.
field() { mesh status --json | grep -o "{\"batch\":$low,[^}]*}" | grep -o "\"$1\":[0-9]*" | cut -d: -f2; }
all_sent() { [ "$(field queued)" -eq 0 ]; }
wait_until 30 "the low batch to be sent to the spore" all_sent
in_flight() { mesh nodes --json | grep -o '"in_flight":[0-9]*' | cut -d: -f2; }
[ "$(in_flight)" -ge 4 ] || fail "only $(in_flight) low tasks are on the spore (wanted at least 4)"
high=$(echo 100 | mesh submit --handler sleep --priority 200 --lines -)
expect_rc 0 timeout 60 mesh wait "$high"
expect_rc 0 timeout 60 mesh wait "$low"
store_check "$low" 106
store_check "$high" 1
hp="(SELECT r.assigned_ms AS a, r.started_ms AS s FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $high)"
# Low tasks that were on the spore before the high one was assigned, yet started after it.
overtaken=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task, $hp h
                 WHERE t.batch = $low AND r.assigned_ms < h.a AND r.started_ms > h.s")
# Low tasks that started while the high one was on the spore: at most the one that was running
# and the next, if the spore had begun it before the high task reached it.
before=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task, $hp h
              WHERE t.batch = $low AND r.started_ms >= h.a AND r.started_ms < h.s")
[ "$overtaken" -ge 3 ] || fail "the high-priority task started before only $overtaken of the low-priority tasks queued on the spore before it (wanted at least 3 of 5)"
[ "$before" -le 1 ] || fail "$before low-priority tasks started on the spore while the high-priority one waited there"
note "the high-priority task started before $overtaken low-priority tasks that were queued on the spore before it; $before started while it waited"
