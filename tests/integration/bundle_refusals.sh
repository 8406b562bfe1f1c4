#!/usr/bin/env bash
# Publishing is refused, with the reason, for: a client (non-admin) key, a bundle signed by a key
# the nexus does not trust, a tampered payload, a tampered manifest, an older version and the same
# version again. Nothing refused is announced, and the version in place keeps serving tasks.
# Spores refuse an expired bundle, and a bundle whose handler another bundle provides (x.serve
# and x being one handler).
. "$(dirname "$0")/lib.sh"
mesh_bin=$bin/mesh
"$mesh_bin" keys gen --release "$T/release.key" > /dev/null
"$mesh_bin" keys gen --release "$T/rogue.key" > /dev/null
sign() {  # sign VERSION KEY OUT
  mkdir -p "$T/src-$1"
  printf '#!/bin/sh\nprintf "v%s:%%s" "$(cat)"\n' "$1" > "$T/src-$1/greet"
  chmod 755 "$T/src-$1/greet"
  "$mesh_bin" bundle sign "$T/src-$1" --name greeter --version "$1" --key "$2" -o "$3" > /dev/null
}
sign 1 "$T/release.key" "$T/g1.bundle"
sign 2 "$T/release.key" "$T/g2.bundle"
sign 3 "$T/rogue.key" "$T/rogue3.bundle"
sign 3 "$T/release.key" "$T/g3.bundle"
up --spores 2 --trust "$T/release.key.pub"
expect_rc 0 timeout 60 mesh bundle publish "$T/g2.bundle"
running_on() { [ "$(mesh bundles --json --timeout 2s | grep -o "\"running\":$2" | wc -l)" -ge "$1" ]; }
wait_until 30 "2 spores to run greeter 2" running_on 2 2

# A client key may submit but not publish.
"$mesh_bin" keys gen "$T/client.key" > /dev/null
mesh keys accept "$T/client.key.pub" --role client > /dev/null
MESH_KEY=$T/client.key expect_rc 1 mesh bundle publish "$T/g3.bundle"
grep -q "admin key" "$T/err" || fail "client publish: $(cat "$T/err")"

# refused FILE REASON: the publish fails with the refusal name.
refused() {
  expect_rc 1 timeout 60 mesh bundle publish "$1"
  grep -q "bundle refused: $2" "$T/err" || fail "publishing $1: expected $2, got: $(cat "$T/err")"
}
refused "$T/rogue3.bundle" untrusted-key
cp "$T/g3.bundle" "$T/payload3.bundle"
python3 - "$T/payload3.bundle" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[-20] ^= 0x55; open(p, 'wb').write(b)
PY
refused "$T/payload3.bundle" payload-mismatch
cp "$T/g3.bundle" "$T/manifest3.bundle"
python3 - "$T/manifest3.bundle" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[24] ^= 0x01; open(p, 'wb').write(b)
PY
set +e; mesh bundle publish "$T/manifest3.bundle" > "$T/out" 2> "$T/err"; rc=$?; set -e
[ $rc -eq 1 ] && grep -Eq "bundle refused: (bad-signature|malformed-manifest)" "$T/err" ||
  fail "tampered manifest: rc $rc: $(cat "$T/err")"
refused "$T/g1.bundle" older-version
refused "$T/g2.bundle" replayed-version
grep -q '"reason":"untrusted-key"' "$T/c/nexus/bundles/audit.log" || fail "refusal not audited on the nexus"
mesh bundles --json > "$T/bundles"
grep -q '"refused_publish":{"name":"greeter","version":1,"reason":"older-version"' "$T/bundles" ||
  fail "mesh bundles does not show the refusals: $(cat "$T/bundles")"
grep -q '^{"name":"greeter","version":2,' "$T/bundles" || fail "the published version changed: $(cat "$T/bundles")"

# Version 2 keeps serving.
batch=$(seq 1 20 | mesh submit --handler greet --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
mesh results "$batch" --json | grep -q '"output":"v2:5"' || fail "version 2 does not serve"
# And a good version 3 still goes through after all that.
expect_rc 0 timeout 60 mesh bundle publish "$T/g3.bundle"
wait_until 30 "2 spores to run greeter 3" running_on 2 3

# A spore refuses too, and says why: version 4 expires 3 s after signing; a spore that joins
# after that refuses it (expired), and `mesh bundles` shows the reason for that spore.
mkdir -p "$T/src-4"
printf '#!/bin/sh\nprintf "v4:%%s" "$(cat)"\n' > "$T/src-4/greet"
chmod 755 "$T/src-4/greet"
"$mesh_bin" bundle sign "$T/src-4" --name greeter --version 4 --key "$T/release.key" --expires 3s -o "$T/g4.bundle" > /dev/null
expires_at=$(($(date +%s) + 4))
expect_rc 0 timeout 60 mesh bundle publish "$T/g4.bundle"
wait_until 30 "2 spores to run greeter 4" running_on 2 4
past_expiry() { [ "$(date +%s)" -ge "$expires_at" ]; }
wait_until 10 "version 4 to expire" past_expiry
"$cluster" add-spore "$T/c" spore-late > /dev/null
late_refused() {
  mesh bundles --json --timeout 2s |
    grep -q '"spore":"spore-late","fingerprint":"[^"]*","running":0,"event":"refused","version":4,"reason":"expired"'
}
wait_until 30 "spore-late to refuse the expired bundle" late_refused
grep -q '"reason":"expired"' "$T/c/spore-late/bundles/audit.log" || fail "spore-late did not audit the refusal"
mesh bundles > "$T/table"
grep -Eq "^  spore-late .* refused .* expired" "$T/table" || fail "mesh bundles text: $(cat "$T/table")"

# Bundle alpha's wc.serve is the handler wc: bundle beta, whose wc would silently lose to it (or
# replace it), is refused by every spore with handler-clash.
mkdir -p "$T/alpha" "$T/beta"
printf '#!/bin/sh\nwhile read -r verb id attempt n; do p=$(head -c "$n"); printf "OK %%d\\n%%s" "${#p}" "$p"; done\n' > "$T/alpha/wc.serve"
printf '#!/bin/sh\ncat\n' > "$T/beta/wc"
chmod 755 "$T/alpha/wc.serve" "$T/beta/wc"
"$mesh_bin" bundle sign "$T/alpha" --name alpha --version 1 --key "$T/release.key" -o "$T/alpha.bundle" > /dev/null
"$mesh_bin" bundle sign "$T/beta" --name beta --version 1 --key "$T/release.key" -o "$T/beta.bundle" > /dev/null
expect_rc 0 timeout 60 mesh bundle publish "$T/alpha.bundle"
alpha_on_all() { [ "$(mesh bundles --json --timeout 2s | grep '^{"name":"alpha"' | grep -o '"running":1' | wc -l)" -ge 3 ]; }
wait_until 30 "3 spores to run alpha 1" alpha_on_all
expect_rc 0 timeout 60 mesh bundle publish "$T/beta.bundle"
beta_clashes() {
  [ "$(mesh bundles --json --timeout 2s | grep '^{"name":"beta"' |
    grep -o '"running":0,"event":"refused","version":1,"reason":"handler-clash"' | wc -l)" -ge 3 ]
}
wait_until 30 "3 spores to refuse beta with handler-clash" beta_clashes
mesh bundles --json | grep '^{"name":"beta"' | grep -q '"message":"handler wc (file wc) is already provided by bundle alpha version 1 (file wc.serve)' ||
  fail "the clash message: $(mesh bundles --json | grep '^{"name":"beta"')"
batch=$(printf 'x\n' | mesh submit --handler wc --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
mesh results "$batch" --json | grep -q '"output":"x"' || fail "alpha's wc.serve does not serve wc"
note "refusals: client key, untrusted-key, payload-mismatch, tampered manifest, older-version, replayed-version; expired and handler-clash on a spore"
