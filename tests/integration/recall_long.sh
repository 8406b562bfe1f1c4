#!/usr/bin/env bash
# Tasks prefetched behind one that runs far longer than its batch's average are taken back
# (docs/protocol.md section 4.20). Two spores of one slot; a batch of `sleep` tasks: 100 of 0 ms,
# one of 60 s, 400 of 0 ms. The batch's average is well under a millisecond when the 60 s task is
# given out, so its spore is sent a prefetch of more tasks behind it, which it queues and cannot
# start while the sleep holds its only slot. Once the sleep has been at the front for over 1 s
# (20x the average is less) and the other spore has room, the nexus recalls them: the spore hands
# them back (not started) and the other spore runs them. Every task but the sleep ends within
# 20 s, while the sleep still runs. (Without the recall they waited for the sleep: 60 s.)
# Handed-back tasks are not charged: none fails, and their attempts end "recalled".
. "$(dirname "$0")/lib.sh"
up --spores 2 --slots 1
submit_ms=$(date +%s%3N)
batch=$({ printf '0\n%.0s' $(seq 100); echo 60000; printf '0\n%.0s' $(seq 400); } |
        mesh submit --handler sleep --attempts 1 --lines -)
wait_until 20 "every task but the 60 s sleep to finish" at_least_done "$batch" 500
done_ms=$(date +%s%3N)
long_results=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch AND t.idx = 100")
[ "$long_results" -eq 0 ] || fail "the 60 s sleep has ended already: the test proves nothing"
# Where the sleep runs, and what was recalled from there.
long_node=$(sql "SELECT node FROM attempts a JOIN tasks t ON t.id = a.task WHERE t.batch = $batch AND a.outcome = 'recalled' LIMIT 1")
[ -n "$long_node" ] || fail "no task was recalled (recalls_sent=$(counter recalls_sent)); nexus log: $(grep -i recall "$T/c/nexus.log" | tail -3)"
recalled=$(sql "SELECT COUNT(*) FROM attempts a JOIN tasks t ON t.id = a.task WHERE t.batch = $batch AND a.outcome = 'recalled'")
[ "$(counter tasks_handed_back)" -eq "$recalled" ] ||
  fail "tasks_handed_back=$(counter tasks_handed_back) but $recalled attempts ended recalled"
[ "$(counter recalls_sent)" -ge 1 ] || fail "recalls_sent is $(counter recalls_sent)"
[ "$(counter tasks_recalled)" -ge "$recalled" ] || fail "tasks_recalled=$(counter tasks_recalled) < $recalled handed back"
[ "$(counter tasks_overdue)" -eq 1 ] || fail "tasks_overdue is $(counter tasks_overdue), expected 1 (the sleep)"
[ "$(counter handback_unheld)" -eq 0 ] || fail "the spore handed back tasks it did not hold"
grep -q "recalled [0-9]* tasks from node $long_node, which may wait there behind long tasks (task [0-9]* of batch $batch has been in flight there" \
  "$T/c/nexus.log" || fail "the nexus did not log the recall: $(grep -i recall "$T/c/nexus.log" | tail -3)"
grep -Eq "handed back [0-9]+ (not started|more recalled tasks)" "$T/c/$long_node.log" ||
  fail "$long_node did not say it handed tasks back"
# Every recalled task ran on the other spore, once, successfully, with nothing charged.
[ "$(sql "SELECT COUNT(*) FROM attempts a JOIN tasks t ON t.id = a.task JOIN results r ON r.task = t.id
          WHERE t.batch = $batch AND a.outcome = 'recalled' AND r.status = 0 AND r.node <> '$long_node'
          AND a.node_lost = 0")" -eq "$recalled" ] || fail "a recalled task did not end well elsewhere"
[ "$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch AND r.status <> 0")" -eq 0 ] ||
  fail "a task failed (with --attempts 1, a charged hand-back would have failed it)"
# The sleep's spore took nothing after the recall: its one slot is held by a long task.
recall_ms=$(sql "SELECT MIN(a.ended_ms) FROM attempts a JOIN tasks t ON t.id = a.task WHERE t.batch = $batch AND a.outcome = 'recalled'")
[ "$(sql "SELECT COUNT(*) FROM results WHERE node = '$long_node' AND assigned_ms > $recall_ms")" -eq 0 ] ||
  fail "$long_node was given tasks after the recall, behind its long task"
lag=$(sql "SELECT MAX(r.finished_ms) - $submit_ms FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch")
expect_rc 0 mesh cancel "$batch"
expect_rc 1 timeout 30 mesh wait "$batch" --quiet
store_check "$batch" 501
note "$recalled tasks queued behind the 60 s sleep on $long_node were recalled and ran on the other spore;" \
     "the last of the 500 short tasks ended $lag ms after the submit (seen at $((done_ms - submit_ms)) ms)"
