#!/usr/bin/env bash
# An idle nexus rests its node port (reads it every 50 ms, not at each spore heartbeat), never
# while a task is queued or running, and resting loses nothing: spores stay alive on heartbeats
# read late, and a batch submitted to a resting nexus runs and its results come back.
. "$(dirname "$0")/lib.sh"
up --spores 2 --nexus-args "--heartbeat 200ms"
rests() { counter node_port_rests; }
rested_since() { [ "$(rests)" -gt "$1" ]; }

wait_until 15 "the idle nexus to rest its node port" rested_since 0
sleep 1.5  # resting, with five heartbeats a second from each spore
[ "$(counter heartbeats_missed)" -eq 0 ] || fail "a spore was found silent while the node port rested"
mesh status --json | grep -q '"nodes_alive":2' || fail "not both spores alive: $(mesh status)"

# A batch submitted to a resting nexus: dispatched, and every result read.
b=$(seq 1 100 | mesh submit --handler echo --lines -)
mesh wait "$b" > /dev/null || fail "the batch submitted while resting did not finish: $(mesh status)"
[ "$(mesh results "$b" | wc -l)" -eq 100 ] || fail "results of the batch: $(mesh results "$b" | wc -l) of 100"

# No rest while a task runs (its spore sends only heartbeats meanwhile).
s=$(echo 4000 | mesh submit --handler sleep --lines -)
running() { mesh status --json | grep -q '"batch":'"$s"',[^}]*"running":1'; }
wait_until 10 "the sleep task to run" running
r0=$(rests)
sleep 2
running || fail "the sleep task no longer runs: the check below would prove nothing"
r1=$(rests)
[ "$r1" -eq "$r0" ] || fail "the node port rested $((r1 - r0)) times while a task ran"
mesh wait "$s" > /dev/null || fail "the sleep task did not finish"
# Idle again: it rests again.
wait_until 15 "the nexus to rest again after the batch" rested_since "$r1"
[ "$(counter heartbeats_missed)" -eq 0 ] || fail "a spore was found silent"
note "$(rests) rests"
