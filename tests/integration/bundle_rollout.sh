#!/usr/bin/env bash
# Signed bundles end to end: a release key, a bundle signed with it and published with the
# admin key; 3 spores install it and run its handler; `mesh bundles` shows the version on each;
# a spore that joins later receives the current bundle and runs its handler too.
. "$(dirname "$0")/lib.sh"
mesh_bin=$bin/mesh
"$mesh_bin" keys gen --release "$T/release.key" > /dev/null
[ "$(stat -c %a "$T/release.key")" = 600 ] || fail "release key is not mode 600"
mkdir -p "$T/src/lib"
printf '#!/bin/sh\nprintf "greet-v1:%%s" "$(cat)"\n' > "$T/src/greet"
chmod 755 "$T/src/greet"
echo data > "$T/src/lib/data.txt"
expect_rc 0 "$mesh_bin" bundle sign "$T/src" --name greeter --version 1 --key "$T/release.key" --expires 30d \
  -o "$T/greeter-1.bundle"
up --spores 3 --trust "$T/release.key.pub"
expect_rc 0 timeout 60 mesh bundle publish "$T/greeter-1.bundle"
grep -q "published bundle greeter version 1" "$T/out" || fail "publish output: $(cat "$T/out")"

# installed_on N VERSION: N spores report VERSION of greeter running.
installed_on() {
  [ "$(mesh bundles --json --timeout 2s | grep -o "\"running\":$2,\"event\":\"[a-z-]*\"" | grep -c installed)" -ge "$1" ] ||
  [ "$(mesh bundles --json --timeout 2s | grep -o "\"running\":$2" | wc -l)" -ge "$1" ]
}
offered_by() { [ "$(mesh nodes --json --timeout 2s | grep -c '"greet"')" -ge "$1" ]; }
wait_until 30 "3 spores to install greeter 1" installed_on 3 1
wait_until 30 "3 spores to offer handler greet" offered_by 3
for s in spore-1 spore-2 spore-3; do
  [ -x "$T/c/$s/bundles/greeter/current/files/greet" ] || fail "$s: greet not installed"
  grep -q '"event":"installed","name":"greeter","version":1' "$T/c/$s/bundles/audit.log" ||
    fail "$s: no install in the audit log: $(cat "$T/c/$s/bundles/audit.log")"
done
batch=$(seq 1 60 | mesh submit --handler greet --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
store_check "$batch" 60
mesh results "$batch" --json > "$T/res"
grep -q '"output":"greet-v1:7"' "$T/res" || fail "unexpected output: $(head -3 "$T/res")"
nodes_used=$(grep -o '"node":"[^"]*"' "$T/res" | sort -u | wc -l)
[ "$nodes_used" -ge 2 ] || fail "the tasks ran on $nodes_used spore(s) only"
mesh bundles > "$T/table"
grep -q "bundle greeter: published version 1" "$T/table" || fail "mesh bundles: $(cat "$T/table")"
for s in spore-1 spore-2 spore-3; do
  grep -Eq "^  $s +[0-9a-f:]+ +1 +installed" "$T/table" || fail "mesh bundles misses $s: $(cat "$T/table")"
done

# (b) a late joiner gets the current bundle from its welcome and runs the handler.
"$cluster" add-spore "$T/c" spore-late > /dev/null
late_installed() { mesh bundles --json --timeout 2s | grep -q '"spore":"spore-late","fingerprint":"[^"]*","running":1'; }
wait_until 30 "spore-late to install greeter 1" late_installed
# Only spore-late may run the next batch: the others are stopped.
for s in spore-1 spore-2 spore-3; do "$cluster" stop "$T/c" "$s"; done
only_late() { [ "$(mesh nodes --json --timeout 2s | grep -c '"name"')" -eq 1 ]; }
wait_until 30 "the others to be gone" only_late
batch=$(seq 1 5 | mesh submit --handler greet --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
mesh results "$batch" --json > "$T/res2"
grep -q '"output":"greet-v1:3".*"node":"spore-late' "$T/res2" || fail "late joiner results: $(cat "$T/res2")"

# The nexus keeps what it serves across a restart, and the spores report their state again.
"$cluster" stop "$T/c" nexus
"$cluster" restart-nexus "$T/c"
after_restart() {
  mesh bundles --json --timeout 2s > "$T/b" &&
    grep -q '^{"name":"greeter","version":1,' "$T/b" && grep -q '"spore":"spore-late","fingerprint":"[^"]*","running":1' "$T/b"
}
wait_until 30 "greeter 1 to be listed after a nexus restart" after_restart

# A release past its expiry keeps running (expiry bounds what can be installed, not what runs),
# and the spore says so: a warning, and the `expired` event in `mesh bundles`.
mkdir -p "$T/brief"
printf '#!/bin/sh\necho brief\n' > "$T/brief/brief"
chmod 755 "$T/brief/brief"
expect_rc 0 "$mesh_bin" bundle sign "$T/brief" --name brief --version 1 --key "$T/release.key" --expires 4s \
  -o "$T/brief-1.bundle"
expect_rc 0 timeout 60 mesh bundle publish "$T/brief-1.bundle"
expired_shown() { mesh bundles --json --timeout 2s | grep -q '"spore":"spore-late","fingerprint":"[^"]*","running":1,"event":"expired","version":1,"reason":"expired","message":"version 1 expired'; }
wait_until 40 "spore-late to report brief 1 as expired" expired_shown
grep -q "WARN  bundle brief: version 1 expired .* still runs here" "$T/c/spore-late.log" || fail "no warning in spore-late's log"
b=$(echo x | mesh submit --handler brief --lines -)
expect_rc 0 timeout 30 mesh wait "$b"
mesh results "$b" --json | grep -q '"output":"brief\\n"' || fail "the expired release does not run: $(mesh results "$b")"
note "greeter 1 installed on 3 spores and on a late joiner; listed after a nexus restart; an expired release runs and is reported"
