#!/usr/bin/env bash
# A task that kills its spore every time is quarantined after the configured limit, instead of
# killing the cluster one spore at a time.
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/handlers"
printf '#!/bin/sh\nkill -KILL $PPID\n' > "$T/handlers/killer"
chmod 755 "$T/handlers/killer"
up --spores 3 --spore-args "--handlers $T/handlers" --nexus-args "--heartbeat 300ms --quarantine-after 2"
batch=$(echo boom | mesh submit --handler killer --attempts 5 --lines -)
expect_rc 1 timeout 60 mesh wait "$batch"
store_check "$batch" 1
expect_rc 1 mesh results "$batch" --json
grep -q '"status":"quarantined"' "$T/out" || fail "not quarantined: $(cat "$T/out")"
[ "$(counter tasks_quarantined)" -eq 1 ] || fail "quarantine not counted"
[ "$(mesh nodes --json | grep -c '"name"')" -eq 1 ] || fail "expected exactly one surviving spore"
good=$(seq 1 100 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 60 mesh wait "$good"
note "quarantined after 2 lost spores; the third keeps working"
