#!/usr/bin/env bash
# Random bytes to every port, and malformed messages from peers with accepted keys, crash
# nothing: the nexus counts them and keeps running batches.
. "$(dirname "$0")/lib.sh"
up --spores 2 --nexus-args "--max-frame 16M --max-payload 8M"
nexus_pid=$(awk '$1 == "nexus" { p = $2 } END { print p }' "$T/c/pids")
for port in $(awk '{ sub(/.*:/, "", $2); print $2 }' "$T/c/nexus/endpoints"); do
  for i in 1 2 3; do
    timeout 5 bash -c "head -c 65536 /dev/urandom > /dev/tcp/127.0.0.1/$port" 2>/dev/null || true
  done
  # A ZMTP greeting with a bogus mechanism, then garbage.
  timeout 5 bash -c "printf '\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03\x00NULL' > /dev/tcp/127.0.0.1/$port; head -c 4096 /dev/urandom > /dev/tcp/127.0.0.1/$port" 2>/dev/null || true
done
# Accepted keys sending garbage: a client key on the client port, a node key on the node port.
client=$(awk '$1 == "client" { print $2 }' "$T/c/nexus/endpoints")
node=$(awk '$1 == "node" { print $2 }' "$T/c/nexus/endpoints")
mesh keys gen "$T/evil-node.key" > /dev/null
mesh keys accept "$T/evil-node.key.pub" --role node > /dev/null
expect_rc 0 timeout 120 "$MESH_BUILD/tests/integration/hostile_client" "$node" "$MESH_NEXUS_KEY" "$T/evil-node.key" node 3000 7
expect_rc 0 timeout 120 "$MESH_BUILD/tests/integration/hostile_client" "$client" "$MESH_NEXUS_KEY" "$MESH_KEY" client 3000 11
kill -0 "$nexus_pid" || fail "the nexus died"
[ "$(counter bad_frames)" -gt 0 ] || fail "bad frames were not counted"
batch=$(seq 1 1000 | mesh submit --handler sha256 --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
[ "$(mesh nodes --json | grep -c '"name":"spore-')" -eq 2 ] || fail "a spore was lost during the attack"
note "bad_frames=$(counter bad_frames) unknown_messages=$(counter unknown_messages) submits_refused=$(counter submits_refused)"
