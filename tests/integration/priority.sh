#!/usr/bin/env bash
# With one slot, a high-priority batch submitted after a low-priority one finishes first.
. "$(dirname "$0")/lib.sh"
up --spores 1 --slots 1
low=$(printf "50\n%.0s" $(seq 40) | mesh submit --handler sleep --priority 1 --lines -)
high=$(printf "50\n%.0s" $(seq 8) | mesh submit --handler sleep --priority 200 --lines -)
expect_rc 0 timeout 60 mesh wait "$high"
mesh status --json > "$T/s"
grep -q "\"batch\":$low,[^}]*\"finished\":false" "$T/s" || fail "the low-priority batch finished first: $(cat "$T/s")"
expect_rc 0 timeout 60 mesh wait "$low"
note "priority 200 finished before priority 1"
