#!/usr/bin/env bash
# A hello is read whole and checked before anything changes. A node that names many running
# tasks joins (each list is read once: reading `running` again per element once hit Cap'n
# Proto's traversal limit half-way through, leaving a node with slots and no route); a hello
# over the limits is refused with an error, counted, and registers nothing.
. "$(dirname "$0")/lib.sh"
up --spores 1
node=$(awk '$1 == "node" { print $2 }' "$T/c/nexus/endpoints")
hc=$MESH_BUILD/tests/integration/hostile_client
for k in many toomany; do
  mesh keys gen "$T/$k.key" > /dev/null
  mesh keys accept "$T/$k.key.pub" --role node > /dev/null
done
# 1000 running ids the nexus does not know: welcomed (then told to cancel them), and listed.
timeout 60 "$hc" "$node" "$MESH_NEXUS_KEY" "$T/many.key" hello:many-running:1000 0 10 > "$T/many.out" &
extra_pids+=($!)
wait_until 20 "an answer to the hello with 1000 running ids" grep -q . "$T/many.out"
[ "$(head -1 "$T/many.out")" = welcome ] || fail "a hello with 1000 running ids got '$(head -1 "$T/many.out")'"
mesh nodes --json | grep -q '"name":"many-running"' || fail "the node that named 1000 running ids is not listed"
# Over the limit (65536 running ids): refused, counted, nothing registered.
expect_rc 0 timeout 60 "$hc" "$node" "$MESH_NEXUS_KEY" "$T/toomany.key" hello:too-many:70000 0 0
grep -q '^error 0 malformed hello: 70000 running tasks' "$T/out" || fail "an oversized hello got '$(cat "$T/out")'"
[ "$(counter bad_hellos)" -ge 1 ] || fail "the malformed hello was not counted"
! mesh nodes --json | grep -q '"name":"too-many"' || fail "a refused hello registered a node"
[ "$(mesh status --json | grep -o '"nodes_alive":[0-9]*' | cut -d: -f2)" -eq 2 ] || fail "nodes_alive is not 2"
! grep -q 'traversal' "$T/c/nexus.log" || fail "the nexus hit the traversal limit: $(grep traversal "$T/c/nexus.log" | head -1)"
[ "$(counter internal_errors)" -eq 0 ] || fail "the nexus counted internal errors"
batch=$(seq 1 50 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 30 mesh wait "$batch"
note "bad_hellos=$(counter bad_hellos)"
