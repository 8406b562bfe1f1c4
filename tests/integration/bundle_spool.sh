#!/usr/bin/env bash
# A spore's receive spools (bundles/.incoming/NAME-VERSION). A bundle with the longest name (64
# characters) and a date-stamp version installs, and so does a bundle whose name sorts after it
# (the spore's offers are handled one by one, in name order). Partial spools of versions nobody
# offers any more (superseded, made up by a nexus, answered `missing`) are deleted after the
# next install.
. "$(dirname "$0")/lib.sh"
mesh_bin=$bin/mesh
"$mesh_bin" keys gen --release "$T/release.key" > /dev/null
long=a$(printf '%063d' 0)
[ ${#long} -eq 64 ] || fail "the long name has ${#long} characters"
mkdir -p "$T/long" "$T/greet"
printf '#!/bin/sh\nprintf "long:%%s" "$(cat)"\n' > "$T/long/longtool"
printf '#!/bin/sh\nprintf "greet:%%s" "$(cat)"\n' > "$T/greet/greet"
chmod 755 "$T/long/longtool" "$T/greet/greet"
"$mesh_bin" bundle sign "$T/long" --name "$long" --version 20261122 --key "$T/release.key" -o "$T/long.bundle" > /dev/null
"$mesh_bin" bundle sign "$T/greet" --name greeter --version 1 --key "$T/release.key" -o "$T/g1.bundle" > /dev/null
"$mesh_bin" bundle sign "$T/greet" --name greeter --version 2 --key "$T/release.key" -o "$T/g2.bundle" > /dev/null
up --spores 1 --trust "$T/release.key.pub"
expect_rc 0 timeout 60 mesh bundle publish "$T/long.bundle"
expect_rc 0 timeout 60 mesh bundle publish "$T/g1.bundle"
runs() { mesh bundles --json --timeout 2s | grep -q "^{\"name\":\"$1\",.*\"spore\":\"spore-1\",\"fingerprint\":\"[^\"]*\",\"running\":$2,"; }
wait_until 30 "spore-1 to run $long 20261122" runs "$long" 20261122
wait_until 30 "spore-1 to run greeter 1" runs greeter 1
for h in longtool greet; do
  batch=$(echo x | mesh submit --handler $h --lines -)
  expect_rc 0 timeout 60 mesh wait "$batch"
done
! grep -q "internal error" "$T/c/spore-1.log" || fail "the spore met an internal error: $(grep "internal error" "$T/c/spore-1.log")"
note "a 64-character bundle name with version 20261122 installed, and the bundle after it too"

# Spools left behind: the superseded version 1, a version the nexus made up and never finished,
# a name it no longer offers. The next install deletes them all.
incoming=$T/c/spore-1/bundles/.incoming
for id in greeter-1 greeter-999 ghost-3; do
  mkdir -p "$incoming/$id"
  head -c 100000 /dev/urandom > "$incoming/$id/bundle.part"
done
expect_rc 0 timeout 60 mesh bundle publish "$T/g2.bundle"
wait_until 30 "spore-1 to run greeter 2" runs greeter 2
spools_gone() { [ -z "$(ls -A "$incoming")" ]; }
wait_until 5 "the stale spools to be deleted" spools_gone
grep -q "removing the bundle spool .*/greeter-999: no bundle offered needs it" "$T/c/spore-1.log" ||
  fail "the deletion was not logged: $(grep -i spool "$T/c/spore-1.log" | tail -3)"
note "the spools of superseded and made-up versions were deleted after the next install"
