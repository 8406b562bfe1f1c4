#!/usr/bin/env bash
# A handler slow to die: on its first attempt it ignores SIGTERM, so after its timeout the spore
# waits out the kill grace (8 s) while the nexus's own deadline (timeout + 5 s) gives the attempt
# up and sends attempt 2 to the same spore (the only one). The spore must run attempt 2 once the
# first has died, not drop it as a duplicate (which would leave the task waiting for the next
# deadline and a third attempt).
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/handlers"
cat > "$T/handlers/stubborn" <<'SH'
#!/bin/sh
# Ignoring SIGTERM is inherited by sleep; SIGKILL still ends both.
if [ "$MESH_ATTEMPT" = 1 ]; then trap '' TERM; sleep 30; fi
echo "attempt $MESH_ATTEMPT"
SH
chmod 755 "$T/handlers/stubborn"
up --spores 1 --slots 2 --spore-args "--handlers $T/handlers --kill-grace 8s"
batch=$(echo x | mesh submit --handler stubborn --task-timeout 1s --attempts 3 --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
expect_rc 0 mesh results "$batch" --json
grep -q '"status":"ok"' "$T/out" || fail "the task did not succeed: $(cat "$T/out")"
grep -q '"attempts":2' "$T/out" || fail "expected success on attempt 2: $(cat "$T/out")"
grep -q 'attempt 2' "$T/out" || fail "the output is not attempt 2's: $(cat "$T/out")"
[ "$(sql "select count(*) from attempts a join tasks t on t.id = a.task where t.batch = $batch")" = 1 ] ||
  fail "expected one ended attempt before the success: $(sql "select * from attempts")"
note "attempt 2 ran on the same spore as soon as the stubborn attempt 1 had died"
