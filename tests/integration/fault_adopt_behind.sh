#!/usr/bin/env bash
# A spore declared lost while it runs a task (frozen here with SIGSTOP, as a flaky VPN link
# would make it look) runs on; the task goes to another spore under a new attempt, and that
# spore is lost too. When the first comes back, its hello lists the task under the attempt it
# runs, older than the nexus's: the nexus adopts it, keeps its own attempt number and tells the
# spore with an assign (docs/protocol.md section 4.3). The spore's failure report then counts
# and the task is retried at once. (Before, the report under the old number was dropped as
# stale and the task waited for its deadline, a minute here.)
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/h"
printf '#!/bin/sh\nsleep 12\necho "failed after 12 s" >&2\nexit 1\n' > "$T/h/slowfail"
chmod 755 "$T/h/slowfail"
up --spores 2 --slots 1 --nexus-args "--heartbeat 300ms" --spore-args "--handlers $T/h"
batch=$(echo x | mesh submit --handler slowfail --attempts 5 --task-timeout 60s --lines -)
holder() { mesh nodes --json | grep '"in_flight":1' | grep -o '"name":"spore-[12]"' | cut -d'"' -f4; }
wait_until 10 "a spore to run the task" sh -c "[ -n \"\$(. '$T/c/env'; '$MESH_BUILD/nodes/mesh' nodes --json | grep '\"in_flight\":1')\" ]"
first=$(holder)
second=spore-1
[ "$first" = spore-1 ] && second=spore-2
p1=$(pid_of "$first")
p2=$(pid_of "$second")
at_exit="kill -CONT $p1 $p2"
kill -STOP "$p1"
lost() { grep -q "node $1 lost" "$T/c/nexus.log"; }
wait_until 10 "the nexus to declare $first lost" lost "$first"
runs_on_second() { [ "$(holder)" = "$second" ]; }
wait_until 10 "the task to run on $second" runs_on_second
kill -STOP "$p2"
wait_until 10 "the nexus to declare $second lost" lost "$second"
kill -CONT "$p1"
told() { grep -q "node $first runs 1 tasks under an attempt given up since" "$T/c/nexus.log"; }
wait_until 15 "$first to come back and be told the task's attempt" told
failed_attempt() { [ "$(sql "SELECT COUNT(*) FROM attempts a JOIN tasks t ON t.id = a.task
                             WHERE t.batch = $batch AND a.outcome = 'failed' AND a.node = '$first'")" -ge 1 ]; }
wait_until 20 "$first's failure to be recorded" failed_attempt
[ "$(counter tasks_adopted_behind)" -ge 1 ] || fail "tasks_adopted_behind is $(counter tasks_adopted_behind)"
kill -CONT "$p2"
at_exit=""
expect_rc 0 mesh cancel "$batch"
note "adopted behind, told, and its failure counted"
