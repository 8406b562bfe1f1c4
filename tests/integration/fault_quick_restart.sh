#!/usr/bin/env bash
# A spore whose process died while the nexus still saw its connection as open (a half-open TCP
# connection across a VPN; here the old process is frozen with SIGSTOP) and that its supervisor
# started again: the new process's hello, under the same key, replaces the old connection
# (section 4.1 of docs/protocol.md: after a refusal and a heartbeat of silence). The task the old
# process ran is not in that hello: it died with the process, which may have died of it, so the
# loss is charged as for a spore that died (with --quarantine-after 1 the task is quarantined).
# Before, any replacement counted as a reconnection, uncharged, so a task that kills its spore
# was retried for ever on a spore that a supervisor restarts quickly. The tasks a reconnecting
# spore still holds stay uncharged (fault_reassign.sh, fault_nexus_restart.sh).
. "$(dirname "$0")/lib.sh"
up --spores 1 --slots 1 --nexus-args "--missed-beats 20 --quarantine-after 1"
batch=$(echo 30000 | mesh submit --handler sleep --attempts 3 --lines -)
running() { mesh nodes --json | grep '"name":"spore-1"' | grep -q '"in_flight":1'; }
wait_until 20 "spore-1 to run the task" running
old=$(pid_of spore-1)
kill -STOP "$old"
at_exit="kill -KILL $old"
# The "restarted" spore: a new process with spore-1's key and none of its tasks.
mkdir -p "$T/c/spore-1b"
cp "$T/c/spore-1/spore.key" "$T/c/spore-1/spore.key.pub" "$T/c/spore-1b/"
"$cluster" add-spore "$T/c" spore-1b > /dev/null
expect_rc 1 timeout 20 mesh wait "$batch" --quiet
expect_rc 1 mesh results "$batch" --json
grep -q '"status":"quarantined"' "$T/out" || fail "the lost task was not charged: $(cat "$T/out")"
grep -q "spore-1 lost: restarted, without this task" "$T/out" || fail "the result does not say why: $(cat "$T/out")"
[ "$(counter nodes_restarted)" -eq 1 ] || fail "nodes_restarted is $(counter nodes_restarted)"
store_check "$batch" 1
kill -KILL "$old"
at_exit=""
# The new process works.
good=$(seq 1 20 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 30 mesh wait "$good" --quiet
note "a replaced connection's lost task was charged"
