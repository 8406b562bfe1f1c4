#!/usr/bin/env bash
# A new version whose handler fails every time is rolled back by each spore on its own (3
# failures within the trial window), reported as such, never installed again, and the previous
# version serves the retried tasks.
. "$(dirname "$0")/lib.sh"
mesh_bin=$bin/mesh
"$mesh_bin" keys gen --release "$T/release.key" > /dev/null
mkdir -p "$T/v1" "$T/v2"
printf '#!/bin/sh\nprintf "v1:%%s" "$(cat)"\n' > "$T/v1/greet"
printf '#!/bin/sh\necho "v2 is broken" >&2\nexit 1\n' > "$T/v2/greet"
chmod 755 "$T/v1/greet" "$T/v2/greet"
"$mesh_bin" bundle sign "$T/v1" --name greeter --version 1 --key "$T/release.key" -o "$T/g1.bundle" > /dev/null
"$mesh_bin" bundle sign "$T/v2" --name greeter --version 2 --key "$T/release.key" -o "$T/g2.bundle" > /dev/null
up --spores 2 --trust "$T/release.key.pub"
running_on() { [ "$(mesh bundles --json --timeout 2s | grep -o "\"running\":$2" | wc -l)" -ge "$1" ]; }
expect_rc 0 timeout 60 mesh bundle publish "$T/g1.bundle"
wait_until 30 "2 spores to run greeter 1" running_on 2 1
expect_rc 0 timeout 60 mesh bundle publish "$T/g2.bundle"
wait_until 30 "2 spores to run greeter 2" running_on 2 2
batch=$(seq 1 40 | mesh submit --handler greet --attempts 10 --lines -)
expect_rc 0 timeout 90 mesh wait "$batch"
store_check "$batch" 40
mesh results "$batch" --json > "$T/res"
[ "$(grep -c '"output":"v1:' "$T/res")" -eq 40 ] || fail "not all served by v1: $(grep -v '"output":"v1:' "$T/res" | head -3)"
rolled_back() {
  [ "$(mesh bundles --json --timeout 2s | grep -o '"running":1,"event":"rolled-back","version":2,"reason":"trial-failed"' | wc -l)" -ge 2 ]
}
wait_until 10 "both spores to report the rollback" rolled_back
mesh bundles --json | grep -q '"rollbacks":1' || fail "rollback count missing: $(mesh bundles --json)"
for s in spore-1 spore-2; do
  grep -q '"event":"rolled-back","name":"greeter","version":2' "$T/c/$s/bundles/audit.log" ||
    fail "$s: rollback not audited: $(cat "$T/c/$s/bundles/audit.log")"
  [ "$(readlink "$T/c/$s/bundles/greeter/current")" = 1 ] || fail "$s: current is not version 1"
done
# Version 2 is never fetched again (it is marked bad): a later batch still runs on v1.
batch=$(seq 1 10 | mesh submit --handler greet --attempts 1 --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
[ "$(mesh results "$batch" --json | grep -c '"output":"v1:')" -eq 10 ] || fail "v1 does not serve after the rollback"
note "greeter 2 rolled back on both spores; v1 served all $((40 + 10)) tasks"
