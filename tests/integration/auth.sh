#!/usr/bin/env bash
# Keys: an unaccepted client is refused (exit 3) and recorded as pending while the nexus keeps
# serving others; a key accepted for one role cannot use another role's port; revoking a key
# shuts it out; accepting a pending key lets it in.
. "$(dirname "$0")/lib.sh"
umask 022  # as a shell's usual: the nexus must not leave its database readable by every user
up --spores 1
[ "$(stat -c %a "$T/c/nexus/nexus.db")" = 600 ] || fail "nexus.db is mode $(stat -c %a "$T/c/nexus/nexus.db")"
mesh keys gen "$T/stranger.key" > /dev/null
expect_rc 3 env MESH_KEY="$T/stranger.key" mesh status
grep -q "refused this client's key" "$T/err" || fail "no clear refusal message: $(cat "$T/err")"
fp=$(mesh keys fingerprint "$T/stranger.key.pub")
mesh keys pending | grep -q "$fp" || fail "the refused key is not pending"
# Visible from any client too, not only on the nexus host.
mesh status | grep -q "^keys: 1 waiting to be let in" || fail "mesh status does not show the pending key: $(mesh status | head -5)"
mesh status --json | grep -q '"keys_pending":1,' || fail "mesh status --json: no keys_pending 1"
# The log's hint is a command that works as printed, with the role of the port.
grep -q "refused unknown key $fp .* on the client port; to let it in: mesh keys accept $fp --role client --data-dir $(cd "$T/c/nexus" && pwd -P) (a spore? " "$T/c/nexus.log" ||
  fail "no usable hint: $(grep "refused unknown key" "$T/c/nexus.log")"
expect_rc 0 mesh status  # the operator is still served
batch=$(seq 1 50 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 30 mesh wait "$batch"
# Accepting the pending key lets it in (as the role it asked for: client).
# Only by its whole fingerprint: anyone can record a pending key whose fingerprint starts with
# the few digits an operator would type.
expect_rc 2 mesh keys accept "${fp:0:9}"
grep -q "give the whole fingerprint" "$T/err" || fail "a prefix accepted a key: $(cat "$T/err")"
expect_rc 0 mesh keys accept "$fp"
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
# ... and the nexus's operator sees it too (libzmq tells only the peer).
wait_until 5 "the nexus to log the failed handshake" grep -q "a Curve handshake failed on the client port" "$T/c/nexus.log"
[ "$(counter handshakes_failed)" -ge 1 ] || fail "handshakes_failed: $(counter handshakes_failed)"
# A secret key file others can read is refused.
chmod 644 "$T/stranger.key"
expect_rc 2 env MESH_KEY="$T/stranger.key" mesh status
grep -q "chmod 600" "$T/err" || fail "no chmod hint: $(cat "$T/err")"
expect_rc 0 mesh status
# A second spore with the name of a connected one (cloned hosts share a host name) joins, and
# the nexus says at once that the two can be told apart only by key.
mkdir -p "$T/c/twin"
mesh keys gen "$T/c/twin/spore.key" > /dev/null
mesh keys accept "$T/c/twin/spore.key.pub" --role node > /dev/null
"$bin/spore" --data-dir "$T/c/twin" --nexus "$node" --nexus-key "$MESH_NEXUS_KEY" --name spore-1 \
  > "$T/twin.log" 2>&1 &
extra_pids+=($!)
wait_until 15 "the twin to join" grep -q "welcomed by nexus" "$T/twin.log"
grep -q "node spore-1 .* has the name of connected node .*: give each spore its own --name" "$T/c/nexus.log" ||
  fail "two spores named spore-1, and no warning: $(grep spore-1 "$T/c/nexus.log" | tail -3)"
[ "$(counter node_names_shared)" -eq 1 ] || fail "node_names_shared: $(counter node_names_shared)"
kill -TERM "${extra_pids[-1]}"
note "keys, roles and revocation hold"
