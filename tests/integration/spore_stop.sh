#!/usr/bin/env bash
# A spore asked to stop (SIGTERM) leaves gently: the nexus gives it no new task, the tasks it
# held and had not started go back to the queue at once (not after the heartbeat timeout), the
# ones it runs finish there, and it says it is gone; nothing is charged to the tasks. With
# --stop-grace over, its running tasks go back to the queue uncharged; a second signal stops it
# at once.
. "$(dirname "$0")/lib.sh"
up --spores 2 --slots 2
ms() { date +%s%3N; }

# 1. Tasks queued on a spore. Nothing is prefetched behind long tasks that hold every slot, so
# the batch begins with 40 tasks of 0 ms: its average is short when its 10 tasks of 2.5 s are
# given out, they count as short, and they are all sent at once (the prefetch of short tasks):
# a spore runs 2 of them and holds the others queued.
batch=$({ printf '0\n%.0s' $(seq 40); printf '2500\n%.0s' $(seq 10); } | mesh submit --handler sleep --lines -)
wait_until 20 "the 40 short tasks to end" at_least_done "$batch" 40
in_flight_of() { mesh nodes --json | grep "\"name\":\"$1\"" | grep -o '"in_flight":[0-9]*' | cut -d: -f2; }
name=""
for s in spore-1 spore-2; do [ "$(in_flight_of "$s")" -ge 3 ] && { name=$s; break; }; done
[ -n "$name" ] || fail "no spore holds a queued task: in flight $(in_flight_of spore-1) and $(in_flight_of spore-2)"
victim=$(pid_of "$name")
term_ms=$(ms)
kill -TERM "$victim"
stopping() { mesh nodes --json | grep "\"name\":\"$name\"" | grep -q '"leaving":true'; }
wait_until 5 "mesh nodes to show $name stopping" stopping
gone() { ! kill -0 "$victim" 2>/dev/null; }
wait_until 15 "$name to finish its 2 running tasks and exit" gone
queued=$(grep -o "stopping: [0-9]* queued tasks handed back; waiting up to 30 s for the 2 running" "$T/c/$name.log" |
         awk '{ print $2 }')
[ -n "$queued" ] && [ "$queued" -ge 1 ] ||
  fail "$name did not hand its queued tasks back: $(grep -i stopping "$T/c/$name.log")"
grep -q "the nexus took this spore's leave" "$T/c/$name.log" || fail "$name did not say goodbye"
grep -q "node $name is stopping: it takes no new task" "$T/c/nexus.log" || fail "the nexus did not see $name stopping"
grep -q "node $name left (stopped)\$" "$T/c/nexus.log" || fail "$name did not leave with nothing unfinished"
! grep -q "node $name lost" "$T/c/nexus.log" || fail "$name was declared lost"
expect_rc 0 timeout 60 mesh wait "$batch" --quiet
store_check "$batch" 50
# Its 2 running tasks ended there, successfully; the handed-back ones left a "node left" attempt
# long before a heartbeat timeout (3 s) would have noticed anything.
[ "$(sql "SELECT COUNT(*) FROM results WHERE node LIKE '$name%' AND status = 0 AND finished_ms > $term_ms")" -ge 2 ] ||
  fail "the tasks running on $name did not finish there"
back=$(sql "SELECT COUNT(*) FROM attempts WHERE node LIKE '$name%' AND outcome = 'node left' AND node_lost = 0
            AND ended_ms - $term_ms < 1500")
[ "$back" -eq "$queued" ] || fail "$back tasks handed back by $name at once, expected $queued"
[ "$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch AND r.status != 0")" -eq 0 ] ||
  fail "a task failed"
[ "$(counter nodes_left)" -eq 1 ] || fail "nodes_left is $(counter nodes_left)"
[ "$(counter nodes_lost)" -eq 0 ] || fail "a spore was declared lost"
[ "$(counter tasks_handed_back)" -eq "$queued" ] || fail "tasks_handed_back is $(counter tasks_handed_back), expected $queued"

# 2. --stop-grace over: the running tasks go back to the queue, uncharged (no attempt spent).
"$cluster" add-spore "$T/c" slow-1 --tags slow --stop-grace 1s > /dev/null
long=$(printf '60000\n60000\n' | mesh submit --handler sleep --requires slow --attempts 1 --lines -)
running_two() { mesh nodes --json | grep '"name":"slow-1"' | grep -q '"in_flight":2'; }
wait_until 20 "slow-1 to run 2 tasks" running_two
slow=$(pid_of slow-1)
kill -TERM "$slow"
slow_gone() { ! kill -0 "$slow" 2>/dev/null; }
wait_until 10 "slow-1 to exit after its 1 s grace" slow_gone
grep -q "stop grace (1 s) over: 2 running tasks go back to the queue" "$T/c/slow-1.log" ||
  fail "slow-1 did not say its grace was over: $(tail -3 "$T/c/slow-1.log")"
grep -q "node slow-1 left (stopped); 2 unfinished tasks go back to the queue" "$T/c/nexus.log" ||
  fail "the nexus did not take slow-1's unfinished tasks back"
# With --attempts 1, a charged loss would have ended them; they wait for another slow spore.
"$cluster" add-spore "$T/c" slow-2 --tags slow > /dev/null
started_again() { [ "$(sql "SELECT COUNT(*) FROM attempts a JOIN tasks t ON t.id = a.task WHERE t.batch = $long
                            AND a.outcome = 'node left'")" -eq 2 ] && mesh nodes --json | grep '"name":"slow-2"' | grep -q '"in_flight":2'; }
wait_until 20 "the 2 long tasks to run again on slow-2" started_again

# 3. A second signal stops at once, grace or not.
slow2=$(pid_of slow-2)
kill -TERM "$slow2"
wait_until 5 "slow-2 to start leaving" sh -c "grep -q 'stopping: 0 queued tasks' '$T/c/slow-2.log'"
kill -TERM "$slow2"
slow2_gone() { ! kill -0 "$slow2" 2>/dev/null; }
wait_until 5 "slow-2 to stop at the second signal" slow2_gone
grep -q "stopping at once (second signal)" "$T/c/slow-2.log" || fail "slow-2 did not stop at once"
expect_rc 0 mesh cancel "$long"
note "handed back at once: $back; left: $(counter nodes_left)"

# 4. A nexus restart while a spore leaves: the new nexus run learns it after its welcome, gives
# it nothing, and takes its running task's result and its leave.
"$cluster" add-spore "$T/c" slow-3 --tags slow --stop-grace 30s > /dev/null
one=$(echo 8000 | mesh submit --handler sleep --requires slow --lines -)
running_one() { mesh nodes --json | grep '"name":"slow-3"' | grep -q '"in_flight":1'; }
wait_until 20 "slow-3 to run its task" running_one
slow3=$(pid_of slow-3)
kill -TERM "$slow3"
wait_until 5 "slow-3 to start leaving" sh -c "grep -q 'stopping: 0 queued tasks' '$T/c/slow-3.log'"
"$cluster" kill "$T/c" nexus
"$cluster" restart-nexus "$T/c" > /dev/null
stopping_again() { [ "$(grep -c 'node slow-3 is stopping' "$T/c/nexus.log")" -ge 2 ]; }
wait_until 20 "the restarted nexus to learn that slow-3 is stopping" stopping_again
more=$(echo 0 | mesh submit --handler sleep --requires slow --lines - 2> /dev/null)
slow3_gone() { ! kill -0 "$slow3" 2>/dev/null; }
wait_until 30 "slow-3 to finish its task and leave" slow3_gone
grep -q "the nexus took this spore's leave" "$T/c/slow-3.log" || fail "slow-3 did not say goodbye to the new nexus run"
expect_rc 0 timeout 30 mesh wait "$one" --quiet
store_check "$one" 1
[ "$(sql "SELECT node FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $one")" = slow-3 ] ||
  fail "the task slow-3 ran was not recorded from it"
[ "$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $more")" -eq 0 ] ||
  fail "a stopping spore was given a task by the restarted nexus"
expect_rc 0 mesh cancel "$more"

# 5. A second signal while the spore waits for the nexus's answer to its final leave (the nexus
# is stopped with SIGSTOP, so no answer comes) stops it at once, not with a crash (the wait's
# poll was interrupted by the signal and the spore died "fatal: Interrupted system call").
"$cluster" add-spore "$T/c" slow-4 --tags slow > /dev/null
slow4=$(pid_of slow-4)
nexus_pid=$(pid_of nexus)
kill -STOP "$nexus_pid"
at_exit="kill -CONT $nexus_pid"
# Both signals go to its other threads (workers; ZeroMQ's threads block every signal), as the
# kernel may choose for a process-directed signal: the first must start the leave, the second
# end the main thread's wait at once (before, the wait ran out its 2 s and the spore left
# without noticing the signal), and the workers whose waits they interrupted must keep serving.
# signal_workers one|all: SIGTERM to one such thread, or to each of them. The first signal goes
# to one thread only: each thread passes its signal on to the main thread, and two passed on
# far enough apart count as two (CI once saw the first burst stop the spore at once).
signal_workers() {
  local threads="" t blocked
  for t in $(ls "/proc/$slow4/task" | grep -vx "$slow4"); do
    blocked=$(awk '/^SigBlk:/ { print $2 }' "/proc/$slow4/task/$t/status")
    if [ $(( 0x$blocked & 0x4000 )) -eq 0 ]; then threads="$threads $t"; fi
  done
  [ -n "$threads" ] || fail "slow-4 has no thread besides its main one that takes SIGTERM"
  threads=$(echo $threads)
  [ "$1" = all ] || threads=${threads##* }  # the last one only
  # Delivered to at least one: the spore may exit before the last ones are signalled.
  python3 -c 'import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True)
sys.exit(not any([libc.syscall(234, int(sys.argv[1]), int(t), 15) == 0 for t in sys.argv[2:]]))' "$slow4" $threads ||
    fail "could not signal threads $threads of slow-4"
}
signal_workers one
wait_until 5 "slow-4 to start leaving" sh -c "grep -q 'stopping: 0 queued tasks' '$T/c/slow-4.log'"
sleep 0.5  # a worker that had returned on its interrupted wait would be gone by now
grep -q "stopping at once" "$T/c/slow-4.log" && fail "one signal stopped slow-4 at once: $(tail -3 "$T/c/slow-4.log")"
signal_workers all
# The worker the signal interrupted must keep serving: it once returned on the EINTR, and the
# spore, having logged "stopped", then hung for ever sending that worker its stop (CI saw it
# now and then, as the kernel put the signal on an idle worker or on the main thread).
slow4_gone() { ! kill -0 "$slow4" 2>/dev/null; }
# The worker the signal interrupted must keep serving: it once returned on the EINTR, and the
# spore, having logged "stopped", then hung for ever sending that worker its stop (CI saw it
# now and then, as the kernel put the signal on an idle worker or on the main thread).
wait_until 5 "slow-4 to stop at the second signal" slow4_gone
kill -CONT "$nexus_pid"
at_exit=""
grep -q "fatal" "$T/c/slow-4.log" && fail "slow-4 crashed at the second signal: $(tail -3 "$T/c/slow-4.log")"
grep -q "stopping at once (second signal)" "$T/c/slow-4.log" || fail "slow-4 did not say it stopped at once: $(tail -3 "$T/c/slow-4.log")"
note "ok"
