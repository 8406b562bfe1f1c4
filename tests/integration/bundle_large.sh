#!/usr/bin/env bash
# A 50 MiB bundle reaches 3 spores with bounded memory (each spore's peak RSS stays far below the
# bundle's size: it is fetched in 256 KiB chunks, 4 in flight, and spooled to disk), and a spore
# killed in the middle of the download resumes from its spool after a restart and installs it.
. "$(dirname "$0")/lib.sh"
mesh_bin=$bin/mesh
"$mesh_bin" keys gen --release "$T/release.key" > /dev/null
mkdir -p "$T/src"
head -c $((50 << 20)) /dev/urandom > "$T/src/blob.bin"
printf '#!/bin/sh\nwc -c < "$(dirname "$0")/blob.bin"\n' > "$T/src/blobsize"
chmod 755 "$T/src/blobsize"
expect_rc 0 "$mesh_bin" bundle sign "$T/src" --name big --version 1 --key "$T/release.key" -o "$T/big-1.bundle"
size=$(stat -c %s "$T/big-1.bundle")
up --spores 3 --trust "$T/release.key.pub"
nexus=$(pid_of nexus)
victim=$(pid_of spore-3)
spool=$T/c/spore-3/bundles/.incoming/big-1/bundle.part
spool_size() { stat -c %s "$spool" 2>/dev/null || echo 0; }
expect_rc 0 timeout 120 mesh bundle publish "$T/big-1.bundle"
# Let the nexus serve in short slices until spore-3 holds part of the bundle, then kill it there.
deadline=$((SECONDS + 60))
kill -STOP "$nexus"
while [ "$(spool_size)" -lt $((4 << 20)) ]; do
  [ $SECONDS -lt $deadline ] || { kill -CONT "$nexus"; fail "spore-3 never started the download"; }
  kill -CONT "$nexus"; sleep 0.01; kill -STOP "$nexus"
done
kill -KILL "$victim"
kill -CONT "$nexus"
partial=$(spool_size)
[ "$partial" -gt 0 ] && [ "$partial" -lt "$size" ] || fail "spore-3 was not killed mid-download ($partial of $size)"
note "spore-3 killed with $partial of $size bytes spooled"
running_on() { mesh bundles --json --timeout 2s | grep -q "\"spore\":\"$1\",\"fingerprint\":\"[^\"]*\",\"running\":1"; }
wait_until 120 "spore-1 to install big 1" running_on spore-1
wait_until 120 "spore-2 to install big 1" running_on spore-2
"$cluster" add-spore "$T/c" spore-3 > /dev/null
wait_until 120 "spore-3 to install big 1 after its restart" running_on spore-3
grep -q "fetching bundle big version 1 ($size bytes, resuming at [1-9]" "$T/c/spore-3.log" ||
  fail "spore-3 did not resume: $(grep -i bundle "$T/c/spore-3.log" | tail -5)"
for s in spore-1 spore-2 spore-3; do
  cmp -s "$T/src/blob.bin" "$T/c/$s/bundles/big/current/files/blob.bin" || fail "$s: blob differs"
  pid=$(pid_of "$s")
  hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
  note "$s peak RSS ${hwm} KiB for a $((size >> 10)) KiB bundle"
  [ "$hwm" -lt $((size >> 10 >> 1)) ] || fail "$s peak RSS ${hwm} KiB is not well under the bundle size"
done
batch=$(printf 'x\ny\nz\n' | mesh submit --handler blobsize --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
[ "$(mesh results "$batch" --json | grep -c "\"output\":\"$((50 << 20))")" -eq 3 ] || fail "blobsize results wrong"
# A spore that asks for the same MiB of the bundle 1,000 times without reading a reply must not
# make the nexus queue a GiB for it: the nexus serves a bounded amount past its progress, then
# ignores its fetches (counted), and keeps serving the others.
mesh keys gen "$T/flood.key" > /dev/null
mesh keys accept "$T/flood.key.pub" --role node > /dev/null
node=$(awk '$1 == "node" { print $2 }' "$T/c/nexus/endpoints")
rss_before=$(awk '/^VmRSS/ { print $2 }' "/proc/$nexus/status")
"$MESH_BUILD/tests/integration/hostile_client" "$node" "$MESH_NEXUS_KEY" "$T/flood.key" fetchflood:big:1 1000 8 &
flood=$!
extra_pids+=("$flood")
wait_until 30 "the flood of fetches to be refused" sh -c "[ \$(mesh status --json | grep -o '\"bundle_fetches_refused\":[0-9]*' | cut -d: -f2) -ge 900 ]"
rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$nexus/status")
note "nexus RSS ${rss_before} KiB before the flood, ${rss} KiB during it"
[ "$rss" -lt $((rss_before + (128 << 10))) ] || fail "the nexus grew by $(( (rss - rss_before) >> 10 )) MiB for a spore that reads nothing"
grep -q "asks for bundle chunks faster than it reads them" "$T/c/nexus.log" || fail "the refusal was not logged"
kill "$flood" 2>/dev/null || true
batch=$(printf 'x\n' | mesh submit --handler blobsize --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
