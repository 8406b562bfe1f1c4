#!/usr/bin/env bash
# Processes a handler leaves outside its process group (setsid, a double fork) do not outlive
# its task: the spore, a child subreaper, kills them when the task ends (with success, or at its
# timeout), spares those of a task still running, and takes them down at its stop.
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/h"
cat > "$T/h/leaver" <<'EOF'
#!/bin/sh
read -r f
setsid sh -c 'echo $$ > "$1"; exec sleep 300' sh "$f" &
i=0
while [ ! -s "$f" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
cat "$f"
EOF
cat > "$T/h/hanger" <<'EOF'
#!/bin/sh
read -r f
setsid sh -c 'echo $$ > "$1"; exec sleep 300' sh "$f"
EOF
cat > "$T/h/keeper" <<'EOF'
#!/bin/sh
read -r f
(setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! > "$f")
sleep 300
EOF
chmod 755 "$T/h/leaver" "$T/h/hanger" "$T/h/keeper"
up --spores 1 --spore-args "--handlers $T/h --stop-grace 1s"
log=$T/c/spore-1.log

# state PID: the process's state letter, empty when it is gone.
state() { sed -E 's/.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null || true; }
gone() { [ -z "$(state "$1")" ]; }
dead() { case "$(state "$1")" in ''|Z|X) return 0 ;; *) return 1 ;; esac; }

# 1. A task that succeeds, leaving a process in a new session that holds its stdout.
b=$(echo "$T/leave.pid" | mesh submit --handler leaver --lines -)
expect_rc 0 timeout 30 mesh wait "$b" --quiet
stray=$(sql "SELECT CAST(r.output AS TEXT) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $b" | tr -d '[:space:]')
[ -n "$stray" ] && [ "$stray" -gt 0 ] || fail "leaver gave no pid: '$stray'"
extra_pids+=("$stray")
task=$(sql "SELECT id FROM tasks WHERE batch = $b")
wait_until 5 "the stray $stray to be killed and reaped" gone "$stray"
grep -q "killed pid $stray (sleep), left running by task $task (handler leaver)" "$log" ||
  fail "the spore did not say it killed $stray: $(grep -i killed "$log" || true)"

# 2. A task that times out while its process in a new session runs in the foreground.
b=$(echo "$T/hang.pid" | mesh submit --handler hanger --task-timeout 500ms --attempts 1 --lines -)
expect_rc 1 timeout 30 mesh wait "$b" --quiet
stray=$(cat "$T/hang.pid")
extra_pids+=("$stray")
[ "$(sql "SELECT r.status FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $b")" != 0 ] || fail "hanger did not fail"
mesh task "$(sql "SELECT id FROM tasks WHERE batch = $b")" | grep -q "timed out" || fail "hanger did not time out"
wait_until 5 "the timed-out task's stray $stray to be killed" gone "$stray"

# 3. A task still running: its stray is spared by the sweeps (one a second) until the task ends,
# here at the spore's stop (--stop-grace 1s ends the run).
b=$(echo "$T/keep.pid" | mesh submit --handler keeper --lines -)
wait_until 10 "keeper to start its stray" test -s "$T/keep.pid"
stray=$(cat "$T/keep.pid")
extra_pids+=("$stray")
sleep 2.5  # two sweeps at least
dead "$stray" && fail "the stray $stray of a running task was killed"
spore=$(pid_of spore-1)
kill -TERM "$spore"
spore_gone() { ! kill -0 "$spore" 2>/dev/null; }
wait_until 15 "spore-1 to stop" spore_gone
dead "$stray" || fail "the stray $stray of keeper outlived the spore"
grep -q "killed pid $stray (sleep), left running by task [0-9]* (handler keeper)" "$log" ||
  fail "the spore did not say it killed keeper's stray $stray"
grep -q "INFO  stopped (3 processes that handlers left running after their tasks were killed)" "$log" ||
  fail "the spore's last line does not count 3 strays: $(tail -2 "$log")"
note "$(grep -c 'left running by' "$log") strays killed"
