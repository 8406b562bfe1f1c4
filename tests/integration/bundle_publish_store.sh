#!/usr/bin/env bash
# A publish the nexus cannot record (its bundle index cannot be written: here DATA_DIR/bundles/
# index.tmp is made a directory, so the write fails on demand) is refused with a clear error and
# nothing recorded: the version it carried is not burned (publishing it again later is not
# refused as replayed), the version served stays, and after a nexus restart the new one is served.
# A publish whose version state cannot be written after its index was (bundle-state/NAME.tmp a
# directory) is accepted: the index is the record; its version is still refused as replayed, and
# the restarted nexus brings the state up to the index.
. "$(dirname "$0")/lib.sh"
mesh_bin=$bin/mesh
"$mesh_bin" keys gen --release "$T/release.key" > /dev/null
for v in 1 2 3; do
  mkdir -p "$T/src-$v"
  printf '#!/bin/sh\nprintf "v%s:%%s" "$(cat)"\n' "$v" > "$T/src-$v/greet"
  chmod 755 "$T/src-$v/greet"
  expect_rc 0 "$mesh_bin" bundle sign "$T/src-$v" --name greeter --version "$v" --key "$T/release.key" \
    -o "$T/greeter-$v.bundle"
done
up --spores 1 --trust "$T/release.key.pub"
expect_rc 0 timeout 60 mesh bundle publish "$T/greeter-1.bundle"
mkdir "$T/c/nexus/bundles/index.tmp"
set +e
timeout 60 mesh bundle publish "$T/greeter-2.bundle" > "$T/out" 2> "$T/err"
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "a publish whose index could not be written succeeded: $(cat "$T/out")"
grep -q "nothing was published" "$T/err" || fail "unclear error: $(cat "$T/err")"
grep -q "cannot store bundle greeter version 2 (nothing recorded)" "$T/c/nexus.log" || fail "the nexus did not log the failure"
grep -q "^version 1$" "$T/c/nexus/bundle-state/greeter" ||
  fail "version 2 was recorded though its publish failed: $(cat "$T/c/nexus/bundle-state/greeter")"
[ ! -e "$T/c/nexus/bundles/greeter-2.bundle" ] || fail "the file of the failed publish is left behind"
mesh bundles > "$T/table"
grep -q "bundle greeter: published version 1" "$T/table" || fail "mesh bundles after the failure: $(cat "$T/table")"
[ "$(counter bundle_store_errors)" -eq 1 ] || fail "the failure was not counted"

# The disk is writable again: the same version publishes (it was not burned).
rmdir "$T/c/nexus/bundles/index.tmp"
expect_rc 0 timeout 60 mesh bundle publish "$T/greeter-2.bundle"
running2() { mesh bundles --json --timeout 2s | grep -q '"spore":"spore-1","fingerprint":"[^"]*","running":2'; }
wait_until 30 "spore-1 to install greeter 2" running2

# The version state cannot be written, the index can: accepted, and still protected.
mkdir "$T/c/nexus/bundle-state/greeter.tmp"
expect_rc 0 timeout 60 mesh bundle publish "$T/greeter-3.bundle"
grep -q "bundle greeter version 3: cannot record its version state" "$T/c/nexus.log" || fail "the state failure was not logged"
grep -q "^version 2$" "$T/c/nexus/bundle-state/greeter" || fail "state: $(cat "$T/c/nexus/bundle-state/greeter")"
expect_rc 1 timeout 60 mesh bundle publish "$T/greeter-3.bundle"
grep -q "replayed-version" "$T/err" || fail "a replay of the served version was not refused: $(cat "$T/err")"
expect_rc 1 timeout 60 mesh bundle publish "$T/greeter-2.bundle"
grep -q "older-version" "$T/err" || fail "an older version was not refused: $(cat "$T/err")"
rmdir "$T/c/nexus/bundle-state/greeter.tmp"
"$cluster" stop "$T/c" nexus
"$cluster" restart-nexus "$T/c"
grep -q "^version 3$" "$T/c/nexus/bundle-state/greeter" ||
  fail "the restart did not bring the state up to the index: $(cat "$T/c/nexus/bundle-state/greeter")"
mesh bundles > "$T/table"
grep -q "bundle greeter: published version 3" "$T/table" || fail "the restarted nexus does not serve version 3: $(cat "$T/table")"
running3() { mesh bundles --json --timeout 2s | grep -q '"spore":"spore-1","fingerprint":"[^"]*","running":3'; }
wait_until 30 "spore-1 to install greeter 3" running3
b=$(echo x | mesh submit --handler greet --lines -)
expect_rc 0 timeout 60 mesh wait "$b"
mesh results "$b" | grep -q "v3:x" || fail "greet: $(mesh results "$b")"
