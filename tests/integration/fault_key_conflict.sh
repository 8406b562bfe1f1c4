#!/usr/bin/env bash
# Two spores with one key (a copied data dir): the second is refused while the first is alive,
# with a clear line on both sides and a counter, and nothing flaps (the first stays connected,
# its tasks are not re-queued). A spore restarted on its own data dir still rejoins at once: its
# old connection, silent since the refusal, is presumed dead at the retry and replaced.
. "$(dirname "$0")/lib.sh"
up --spores 1 --slots 2
node=$(awk '$1 == "node" { print $2 }' "$T/c/nexus/endpoints")
cp -r "$T/c/spore-1" "$T/c/clone"
batch=$(printf '2500\n%.0s' $(seq 8) | mesh submit --handler sleep --lines -)
"$bin/spore" --data-dir "$T/c/clone" --nexus "$node" --nexus-key "$T/c/nexus/nexus.key.pub" --name clone \
  --slots 2 >> "$T/c/clone.log" 2>&1 &
clone=$!
extra_pids+=("$clone")
conflicts_at_least() { [ "$(counter node_key_conflicts)" -ge "$1" ]; }
# The clone retries after 2 s, then 2 s, 4 s, ...: three refusals within about 10 s.
wait_until 20 "three refused hellos" conflicts_at_least 3
grep -q 'is already connected from spore spore-1' "$T/c/nexus.log" || fail "the nexus did not log the conflict"
grep -q "refused this spore's hello: key .* is already connected from another spore" "$T/c/clone.log" ||
  fail "the clone did not log the refusal: $(tail -3 "$T/c/clone.log")"
! grep -q 'lost: reconnected' "$T/c/nexus.log" || fail "the spores displaced each other: $(grep -c 'lost: reconnected' "$T/c/nexus.log") times"
[ "$(counter tasks_requeued)" -eq 0 ] || fail "tasks were re-queued: $(counter tasks_requeued)"
[ "$(mesh nodes --json | grep -c '"name":"spore-1"')" -eq 1 ] || fail "spore-1 is not the connected spore"
! mesh nodes --json | grep -q '"name":"clone"' || fail "the clone got in"
kill -0 "$clone" || fail "the clone exited instead of retrying"
expect_rc 0 timeout 60 mesh wait "$batch"
store_check "$batch" 8
kill -KILL "$clone"
# A plain restart of spore-1 (SIGKILL, then the same data dir again): back within a few seconds.
joins() { grep -c 'node spore-1 (.*) joined' "$T/c/nexus.log" || true; }
before=$(joins)
"$cluster" kill "$T/c" spore-1
started=$SECONDS
"$bin/spore" --data-dir "$T/c/spore-1" --nexus "$node" --nexus-key "$T/c/nexus/nexus.key.pub" --name spore-1 \
  --slots 2 >> "$T/c/spore-1.log" 2>&1 &
extra_pids+=($!)
rejoined() { [ "$(joins)" -gt "$before" ]; }
wait_until 10 "the restarted spore to rejoin" rejoined
note "conflicts=$(counter node_key_conflicts); the restarted spore rejoined in $((SECONDS - started)) s"
batch2=$(seq 1 20 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 30 mesh wait "$batch2"
