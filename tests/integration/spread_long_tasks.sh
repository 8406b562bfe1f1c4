#!/usr/bin/env bash
# After many short tasks, a batch of long ones is spread over every free slot of the cluster:
# with 2 spores of 2 slots, 4 long tasks run 2 on each spore (the prefetch that short tasks
# earned must not put all 4 on one spore while the other sits idle).
. "$(dirname "$0")/lib.sh"
up --spores 2 --slots 2
expect_rc 0 timeout 120 mesh submit --handler sha256 --lines <(seq 1 10000) --wait
expect_rc 0 timeout 60 mesh submit --handler sleep --lines <(printf '1000\n%.0s' 1 2 3 4) --results --json
[ "$(grep -c '"status":"ok"' "$T/out")" -eq 4 ] || fail "not 4 results: $(cat "$T/out")"
for s in spore-1 spore-2; do
  n=$(grep -c "\"node\":\"$s\"" "$T/out" || true)
  [ "$n" -eq 2 ] || fail "$s ran $n of the 4 long tasks, expected 2: $(cat "$T/out")"
done
note "4 long tasks after 10,000 short ones: 2 on each spore"
