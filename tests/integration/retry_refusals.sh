#!/usr/bin/env bash
# `mesh retry` refusals and warnings that retry.sh does not cover, on the real binaries: another
# client's batch is refused (exit 1, the nexus's `forbidden`), and an admin key may retry it; a
# retry that would take the nexus over --max-queued is refused, makes no batch, and is taken
# once the queue has room; a retry whose required tag no live spore has any more is taken with
# a warning on stderr, and `mesh task` says why its tasks wait.
. "$(dirname "$0")/lib.sh"
up --spores 1 --nexus-args "--max-queued 12"
"$cluster" add-spore "$T/c" tagged --tags special > /dev/null

# The operator's key (admin) submits batch a; another client, with a key of role client, b.
seq 1 8 | sed 's/^/a-/' > "$T/a.lines"
a=$(mesh submit --handler fail --lines "$T/a.lines" --attempts 1 --label a)
expect_rc 1 timeout 60 mesh wait "$a"
mesh keys gen "$T/other.key" > /dev/null
expect_rc 0 mesh keys accept "$T/other.key.pub" --role client
other() { env MESH_KEY="$T/other.key" "$bin/mesh" "$@"; }
b=$(seq 1 3 | other submit --handler fail --lines - --attempts 1 --label b)
expect_rc 1 timeout 60 env MESH_KEY="$T/other.key" "$bin/mesh" wait "$b"

note "another client's batch: refused; the admin key may retry it"
batches_before=$(sql "SELECT COUNT(*) FROM batches")
expect_rc 1 other retry "$a"
grep -q "batch $a belongs to another client (an admin key can retry it)" "$T/err" ||
  fail "a client retried another client's batch, or was not told why: $(cat "$T/err")"
expect_rc 0 other retry "$b"
rb=$(cat "$T/out")
expect_rc 0 mesh retry "$b"
rb_admin=$(cat "$T/out")
[ "$(sql "SELECT COUNT(*) FROM batches")" -eq $((batches_before + 2)) ] || fail "a refused retry made a batch"
expect_rc 1 timeout 60 mesh wait "$rb"
expect_rc 1 timeout 60 mesh wait "$rb_admin"
[ "$(sql "SELECT COUNT(*) FROM tasks WHERE batch IN ($rb, $rb_admin)")" -eq 6 ] || fail "the retries of b do not have 3 tasks each"

note "--max-queued 12: 6 sleeping tasks and 8 failed ones do not fit; after a cancel they do"
hold=$(printf '30000\n%.0s' 1 2 3 4 5 6 | mesh submit --handler sleep --lines - --label hold)
wait_until 20 "the sleeping tasks to be held" sh -c "[ \$(mesh status --json | grep -o '\"running\":[0-9]*' | head -1 | cut -d: -f2) -ge 1 ]"
batches_before=$(sql "SELECT COUNT(*) FROM batches")
expect_rc 1 mesh retry "$a"
grep -q "the nexus holds 6 unfinished tasks (limit 12) and batch $a has 8 failed tasks: wait for some to finish and retry" "$T/err" ||
  fail "a retry over --max-queued was not refused, or not told why: $(cat "$T/err")"
[ "$(sql "SELECT COUNT(*) FROM batches")" -eq "$batches_before" ] || fail "a retry refused for --max-queued made a batch"
expect_rc 0 mesh cancel "$hold"
wait_until 20 "the cancelled tasks to leave the queue" sh -c "mesh status --json | grep -q '\"queued\":0,\"running\":0'"
expect_rc 0 mesh retry "$a"
ra=$(cat "$T/out")
expect_rc 1 timeout 60 mesh wait "$ra"
[ "$(sql "SELECT COUNT(*) FROM tasks WHERE batch = $ra")" -eq 8 ] || fail "the retry of a does not have 8 tasks"

note "a required tag no live spore has: the retry is taken with a warning, and its tasks say why they wait"
c=$(seq 1 3 | mesh submit --handler fail --lines - --attempts 1 --requires special --label c)
expect_rc 1 timeout 60 mesh wait "$c"
[ "$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $c AND r.node = 'tagged'")" -eq 3 ] ||
  fail "the tasks of batch $c did not all run on the tagged spore: $(sql "SELECT r.node FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $c")"
"$cluster" stop "$T/c" tagged
wait_until 30 "the tagged spore to leave" sh -c "! mesh nodes | grep -q tagged"
expect_rc 0 mesh retry "$c"
rc_batch=$(cat "$T/out")
grep -q "mesh: batch $rc_batch: .*special" "$T/err" || fail "no warning that no live spore has tag special: $(cat "$T/err")"
expect_rc 0 mesh task "$rc_batch:0"
grep -qi "special" "$T/out" || fail "mesh task does not say why the task waits: $(cat "$T/out")"
expect_rc 0 mesh cancel "$rc_batch"
note "ok"
