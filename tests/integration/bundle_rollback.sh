#!/usr/bin/env bash
# The trial of a new bundle version. A client's tasks that fail (exit 1: "this input is bad") or
# time out, however many and however often retried, never roll the version back: a client key
# must not be able to undo a release. A version whose handler crashes on most tasks is rolled
# back by each spore on its own, reported with how many of how many tasks crashed, never
# installed again, and the previous version serves the retried tasks.
. "$(dirname "$0")/lib.sh"
mesh_bin=$bin/mesh
"$mesh_bin" keys gen --release "$T/release.key" > /dev/null
mkdir -p "$T/v1" "$T/v2" "$T/v3"
for v in 1 2; do
  cat > "$T/v$v/greet" <<EOF
#!/bin/sh
read -r x
case \$x in
  bad*) echo "bad input: \$x" >&2; exit 1 ;;
  slow*) exec sleep 30 ;;
esac
printf "v$v:%s" "\$x"
EOF
done
# Version 3 is broken: it crashes on everything but the "ok" inputs.
cat > "$T/v3/greet" <<'EOF'
#!/bin/sh
read -r x
case $x in
  ok*) printf "v3:%s" "$x" ;;
  *) kill -SEGV $$ ;;
esac
EOF
chmod 755 "$T"/v*/greet
for v in 1 2 3; do
  "$mesh_bin" bundle sign "$T/v$v" --name greeter --version $v --key "$T/release.key" -o "$T/g$v.bundle" > /dev/null
done
up --spores 2 --trust "$T/release.key.pub"
running_on() { [ "$(mesh bundles --json --timeout 2s | grep -o "\"running\":$2" | wc -l)" -ge "$1" ]; }
expect_rc 0 timeout 60 mesh bundle publish "$T/g1.bundle"
wait_until 30 "2 spores to run greeter 1" running_on 2 1
expect_rc 0 timeout 60 mesh bundle publish "$T/g2.bundle"
wait_until 30 "2 spores to run greeter 2" running_on 2 2

# Within version 2's trial, a client submits inputs its handler refuses and inputs that time out,
# each attempted 3 times: 27 failed attempts, more than enough to reach 3 on each spore.
"$mesh_bin" keys gen "$T/client.key" > /dev/null
mesh keys accept "$T/client.key.pub" --role client > /dev/null
printf 'bad%s\n' 1 2 3 4 5 6 > "$T/hostile"
printf 'slow%s\n' 1 2 3 >> "$T/hostile"
batch=$(MESH_KEY=$T/client.key mesh submit --handler greet --attempts 3 --task-timeout 300ms --lines "$T/hostile")
MESH_KEY=$T/client.key expect_rc 1 timeout 90 mesh wait "$batch"
store_check "$batch" 9
tried=$(sql "SELECT MIN(r.attempts) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch")
[ "$tried" -eq 3 ] || fail "the client's tasks were not each attempted 3 times (at least: $tried)"
for s in spore-1 spore-2; do
  ! grep -q '"event":"rolled-back"' "$T/c/$s/bundles/audit.log" ||
    fail "$s: a client's failing tasks rolled greeter 2 back: $(grep rolled-back "$T/c/$s/bundles/audit.log")"
  [ "$(readlink "$T/c/$s/bundles/greeter/current")" = 2 ] || fail "$s: current is not version 2"
done
! mesh bundles --json | grep -q 'rolled-back' || fail "a rollback was reported: $(mesh bundles --json)"
batch=$(seq 1 6 | mesh submit --handler greet --attempts 1 --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
[ "$(mesh results "$batch" --json | grep -c '"output":"v2:')" -eq 6 ] || fail "v2 does not serve after the failures"
note "failed and timed-out client tasks left greeter 2 in place"

# Version 3 crashes on 30 of 40 inputs: each spore rolls it back to version 2.
expect_rc 0 timeout 60 mesh bundle publish "$T/g3.bundle"
wait_until 30 "2 spores to run greeter 3" running_on 2 3
{ seq 1 30; seq 1 10 | sed 's/^/ok/'; } > "$T/inputs"
batch=$(mesh submit --handler greet --attempts 10 --lines "$T/inputs")
expect_rc 0 timeout 90 mesh wait "$batch"
store_check "$batch" 40
mesh results "$batch" --json > "$T/res"
[ "$(grep -c '"output":"v2:[0-9]' "$T/res")" -eq 30 ] || fail "the crashed inputs were not all served by v2: $(grep -v '"output":"v2:' "$T/res" | head -3)"
# Each attempt names the version that ran it (schema 12): every v2 output came from version 2,
# every crash from version 3, and mesh task shows a crash on 3 followed by the success on 2.
in_batch="JOIN tasks t ON t.id = x.task WHERE t.batch = $batch"
[ "$(sql "SELECT COUNT(*) FROM results x $in_batch AND CAST(x.output AS TEXT) LIKE 'v2:%' AND x.bundle = 'greeter' AND x.bundle_version = 2")" -ge 30 ] &&
  [ "$(sql "SELECT COUNT(*) FROM results x $in_batch AND CAST(x.output AS TEXT) LIKE 'v2:%' AND (x.bundle <> 'greeter' OR x.bundle_version <> 2)")" -eq 0 ] ||
  fail "the results served by v2 do not all name greeter 2: $(sql "SELECT x.output, x.bundle, x.bundle_version FROM results x $in_batch")"
[ "$(sql "SELECT COUNT(*) FROM results x $in_batch AND CAST(x.output AS TEXT) LIKE 'v3:%' AND (x.bundle <> 'greeter' OR x.bundle_version <> 3)")" -eq 0 ] ||
  fail "a result served by v3 names another version"
[ "$(sql "SELECT COUNT(*) FROM attempts x $in_batch AND x.outcome = 'crashed' AND (x.bundle <> 'greeter' OR x.bundle_version <> 3)")" -eq 0 ] ||
  fail "a crash does not name greeter 3: $(sql "SELECT x.outcome, x.bundle, x.bundle_version FROM attempts x $in_batch")"
idx=$(sql "SELECT t.idx FROM attempts x $in_batch AND x.outcome = 'crashed' ORDER BY t.idx LIMIT 1")
[ -n "$idx" ] || fail "no crashed attempt was stored"
mesh task "$batch:$idx" --json > "$T/task.json"
python3 - "$T/task.json" <<'PYEOF' || fail "mesh task does not name the versions that ran: $(cat "$T/task.json")"
import json, sys
a = json.load(open(sys.argv[1]))["attempts"]
assert a[-1]["outcome"] == "ok" and a[-1]["bundle"] == {"name": "greeter", "version": 2}, a
assert any(x["outcome"] == "crashed" and x["bundle"] == {"name": "greeter", "version": 3} for x in a[:-1]), a
PYEOF
mesh task "$batch:$idx" > "$T/task.txt"
grep -q "ended: crashed (bundle greeter version 3): " "$T/task.txt" && grep -q "ended: ok (bundle greeter version 2)$" "$T/task.txt" ||
  fail "mesh task's text does not name the versions: $(cat "$T/task.txt")"
rolled_back() {
  [ "$(mesh bundles --json --timeout 2s | grep -o '"running":2,"event":"rolled-back","version":3,"reason":"trial-failed"' | wc -l)" -ge 2 ]
}
wait_until 10 "both spores to report the rollback" rolled_back
mesh bundles --json | grep -q '"message":"trial-failed: [0-9]* of the [0-9]* tasks of its handlers that ended here within 60 s of the install crashed or could not start' ||
  fail "the rollback does not say how many tasks crashed: $(mesh bundles --json)"
mesh bundles --json | grep -q '"rollbacks":1' || fail "rollback count missing: $(mesh bundles --json)"
# The table says the reason once, and warns that the nexus still serves the version.
mesh bundles > "$T/bundles.txt"
grep -q "rolled-back *3 *1  trial-failed: [0-9]* of the" "$T/bundles.txt" || fail "mesh bundles: $(cat "$T/bundles.txt")"
! grep -q "trial-failed: trial-failed" "$T/bundles.txt" || fail "the reason is doubled: $(cat "$T/bundles.txt")"
grep -q "warning: version 3 was rolled back on 2 of 2 spores; spores that join now still install it" "$T/bundles.txt" ||
  fail "no warning about the rolled-back version still served: $(cat "$T/bundles.txt")"
for s in spore-1 spore-2; do
  grep -q '"event":"rolled-back","name":"greeter","version":3' "$T/c/$s/bundles/audit.log" ||
    fail "$s: rollback not audited: $(cat "$T/c/$s/bundles/audit.log")"
  [ "$(readlink "$T/c/$s/bundles/greeter/current")" = 2 ] || fail "$s: current is not version 2"
done
# Version 3 is never fetched again (it is marked bad): a later batch still runs on v2.
batch=$(seq 1 10 | mesh submit --handler greet --attempts 1 --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
[ "$(mesh results "$batch" --json | grep -c '"output":"v2:')" -eq 10 ] || fail "v2 does not serve after the rollback"

# A first install that crashes has no previous version: it is withdrawn, so its handler is gone
# from the spores (its tasks wait for a fix instead of crashing), and it is never installed again.
mkdir -p "$T/crashy"
printf '#!/bin/sh\nkill -SEGV $$\n' > "$T/crashy/boom"
chmod 755 "$T/crashy/boom"
"$mesh_bin" bundle sign "$T/crashy" --name crashy --version 1 --key "$T/release.key" -o "$T/crashy1.bundle" > /dev/null
expect_rc 0 timeout 60 mesh bundle publish "$T/crashy1.bundle"
offered() { [ "$(mesh nodes --json --timeout 2s | grep -c '"boom"')" -eq "$1" ]; }
wait_until 30 "both spores to offer boom" offered 2
set +e
crashes=$(seq 1 12 | mesh submit --handler boom --attempts 1 --lines -)
set -e
withdrawn() { [ "$(mesh bundles --json --timeout 2s | grep -o '"event":"rolled-back","version":1,"reason":"trial-failed"' | wc -l)" -ge 2 ]; }
wait_until 30 "both spores to withdraw crashy 1" withdrawn
wait_until 10 "no spore to offer boom" offered 0
for s in spore-1 spore-2; do
  [ ! -e "$T/c/$s/bundles/crashy/current" ] || fail "$s: crashy still has a current version"
  grep -q "withdrew bundle crashy (no previous version" "$T/c/$s.log" || fail "$s did not say it withdrew crashy"
done
expect_rc 1 sh -c 'echo x | mesh submit --handler boom --lines -'
grep -q "no live spore offers handler 'boom'" "$T/err" || fail "a task for the withdrawn handler: $(cat "$T/err")"
# Tasks that reached a spore before the withdrawal failed; the rest wait and are cancelled here.
# Under load every one of them may have run first, so "finished already" (exit 5) is also fine.
set +e
mesh cancel "$crashes" > /dev/null 2> "$T/err"
rc=$?
set -e
[ "$rc" -eq 0 ] || { [ "$rc" -eq 5 ] && grep -q "has finished already" "$T/err"; } ||
  fail "'mesh cancel $crashes' exited $rc: $(cat "$T/err")"
timeout 30 mesh wait "$crashes" > /dev/null 2>&1 || true  # exits non-zero: its tasks crashed or were cancelled
ended=$(mesh results "$crashes" --json | grep -c '"status":"\(crashed\|cancelled\)"' || true)
[ "$ended" -eq 12 ] || fail "crashy's 12 tasks did not all end crashed or cancelled: $(mesh results "$crashes" --json)"
note "greeter 3 (crashing) rolled back on both spores; v2 served the retried tasks; crashy 1 (a first install) withdrawn"
