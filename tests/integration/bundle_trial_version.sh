#!/usr/bin/env bash
# A new version's trial judges the tasks that ran on it, not those that started on the previous
# version and crash during the new one's trial: four tasks that crash on version 1 after
# version 2 is installed do not roll version 2 back (before the spore reported the version
# that ran, they counted against it: 4 crashes of 4 tasks, past both thresholds). Their retries
# run on version 2, and mesh task names the version of each attempt.
. "$(dirname "$0")/lib.sh"
mesh_bin=$bin/mesh
"$mesh_bin" keys gen --release "$T/release.key" > /dev/null
mkdir -p "$T/v1" "$T/v2" "$T/gates"
# Version 1: a path input says it started, waits for PATH.go, then crashes.
cat > "$T/v1/greet" <<'SH'
#!/bin/sh
read -r x
case $x in
  /*) : > "$x.started"
      i=0
      while [ ! -e "$x.go" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
      kill -SEGV $$ ;;
esac
printf "v1:%s" "$x"
SH
printf '#!/bin/sh\nread -r x\nprintf "v2:%%s" "$x"\n' > "$T/v2/greet"
chmod 755 "$T"/v*/greet
for v in 1 2; do
  "$mesh_bin" bundle sign "$T/v$v" --name greeter --version $v --key "$T/release.key" -o "$T/g$v.bundle" > /dev/null
done
up --spores 1 --slots 4 --trust "$T/release.key.pub"
running_on() { mesh bundles --json --timeout 2s | grep -q "\"running\":$1"; }
expect_rc 0 timeout 60 mesh bundle publish "$T/g1.bundle"
wait_until 30 "the spore to run greeter 1" running_on 1

for i in 1 2 3 4; do echo "$T/gates/t$i"; done > "$T/inputs"
batch=$(mesh submit --handler greet --attempts 3 --lines "$T/inputs")
all_started() { [ "$(ls "$T"/gates/*.started 2> /dev/null | wc -l)" -eq 4 ]; }
wait_until 30 "the 4 tasks to start on version 1" all_started
expect_rc 0 timeout 60 mesh bundle publish "$T/g2.bundle"
wait_until 30 "the spore to run greeter 2" running_on 2
for i in 1 2 3 4; do : > "$T/gates/t$i.go"; done  # the version 1 runs crash now, in version 2's trial
expect_rc 0 timeout 60 mesh wait "$batch"
store_check "$batch" 4
[ "$(mesh results "$batch" --json | grep -c '"output":"v2:')" -eq 4 ] || fail "the retries did not run on v2: $(mesh results "$batch" --json)"
! grep -q '"event":"rolled-back"' "$T/c/spore-1/bundles/audit.log" ||
  fail "crashes of version 1 rolled version 2 back: $(grep rolled-back "$T/c/spore-1/bundles/audit.log")"
[ "$(readlink "$T/c/spore-1/bundles/greeter/current")" = 2 ] || fail "current is not version 2"
[ "$(sql "SELECT COUNT(*) FROM attempts a JOIN tasks t ON t.id = a.task WHERE t.batch = $batch AND a.outcome = 'crashed' AND a.bundle = 'greeter' AND a.bundle_version = 1")" -eq 4 ] ||
  fail "the crashes are not stored as version 1's: $(sql "SELECT a.task, a.outcome, a.bundle, a.bundle_version FROM attempts a")"
mesh task "$batch:0" > "$T/task.txt"
grep -q "attempt 1 ended: crashed (bundle greeter version 1): " "$T/task.txt" &&
  grep -q "attempt 2 ended: ok (bundle greeter version 2)$" "$T/task.txt" || fail "mesh task: $(cat "$T/task.txt")"
note "4 tasks crashed on greeter 1 during greeter 2's trial; greeter 2 stayed and ran their retries"
