#!/usr/bin/env bash
# Keys: an unaccepted client is refused (exit 3) and recorded as pending while the nexus keeps
# serving others; a key accepted for one role cannot use another role's port; revoking a key
# shuts it out; accepting a pending key lets it in.
. "$(dirname "$0")/lib.sh"
up --spores 1
mesh keys gen "$T/stranger.key" > /dev/null
expect_rc 3 env MESH_KEY="$T/stranger.key" mesh status
grep -q "refused this client's key" "$T/err" || fail "no clear refusal message: $(cat "$T/err")"
fp=$(mesh keys fingerprint "$T/stranger.key.pub")
mesh keys pending | grep -q "$fp" || fail "the refused key is not pending"
expect_rc 0 mesh status  # the operator is still served
batch=$(seq 1 50 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 30 mesh wait "$batch"
# Accepting the pending key lets it in (as the role it asked for: client).
expect_rc 0 mesh keys accept "${fp:0:9}"
expect_rc 0 env MESH_KEY="$T/stranger.key" mesh status
# A client key cannot act as a node: a spore with it is refused on the node port.
mkdir -p "$T/c/impostor"
cp "$T/stranger.key" "$T/c/impostor/spore.key"
cp "$T/stranger.key.pub" "$T/c/impostor/spore.key.pub"
node=$(awk '$1 == "node" { print $2 }' "$T/c/nexus/endpoints")
"$bin/spore" --data-dir "$T/c/impostor" --nexus "$node" --nexus-key "$MESH_NEXUS_KEY" --name impostor \
  > "$T/impostor.log" 2>&1 &
extra_pids+=($!)
wait_until 15 "the impostor spore to be refused" grep -q "refused this spore's key" "$T/impostor.log"
mesh nodes | grep -q impostor && fail "a client key joined as a node"
# A node key cannot act as a client; the refusal says to check the port and the role.
expect_rc 3 env MESH_KEY="$T/c/spore-1/spore.key" mesh status
grep -q "check that .* is the nexus's client port" "$T/err" || fail "no port/role hint: $(cat "$T/err")"
# Following the first half of that advice does not silently turn the spore's key into a client's.
spore_fp=$(mesh keys fingerprint "$T/c/spore-1/spore.key.pub")
expect_rc 2 mesh keys accept "$spore_fp" --role client
grep -q "already accepted as node.*revoke it first" "$T/err" || fail "role change not explained: $(cat "$T/err")"
mesh keys list | grep "${spore_fp}" | grep -q node || fail "the spore's key changed role"
expect_rc 0 mesh keys accept "$spore_fp"
grep -q "already accepted as node" "$T/out" || fail "re-accepting an accepted key: $(cat "$T/out")"
mesh nodes | grep -q spore-1 || fail "the spore was dropped"
# Revoking a key shuts it out at its next connection.
expect_rc 0 mesh keys revoke "$fp"
# Bad key arguments are usage errors (exit 2), whatever form they take.
mesh keys gen "$T/never.key" > /dev/null
expect_rc 2 mesh keys revoke "$T/never.key.pub"
expect_rc 2 mesh keys fingerprint "$T/no-such-file"
expect_rc 3 env MESH_KEY="$T/stranger.key" mesh status
# A wrong nexus key (a man in the middle) fails the handshake.
mesh keys gen "$T/fake-nexus.key" > /dev/null
expect_rc 3 env MESH_NEXUS_KEY="$T/fake-nexus.key.pub" mesh status --timeout 2s
grep -q "closed the connection during the Curve handshake.*is MESH_NEXUS_KEY the key of this nexus" "$T/err" ||
  fail "a wrong nexus key is not explained: $(cat "$T/err")"
# A secret key file others can read is refused.
chmod 644 "$T/stranger.key"
expect_rc 2 env MESH_KEY="$T/stranger.key" mesh status
grep -q "chmod 600" "$T/err" || fail "no chmod hint: $(cat "$T/err")"
expect_rc 0 mesh status
note "keys, roles and revocation hold"
