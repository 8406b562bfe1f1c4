#!/usr/bin/env bash
# A map-reduce where one spore is SIGKILLed during the map stage and another during the reduce
# stage still produces the identical answer.
. "$(dirname "$0")/lib.sh"
"$MESH_BUILD/examples/make-corpus" --bytes 3000000 > "$T/corpus.txt"
mkdir -p "$T/handlers"
cp "$repo"/examples/wordcount/{mapper,combiner,reducer} "$T/handlers/"
# Slow stages, so that each kill lands inside its stage.
printf '#!/bin/sh\nsleep 0.2\nexec %s/handlers/mapper\n' "$T" > "$T/handlers/slow-mapper"
printf '#!/bin/sh\nsleep 1.5\nexec %s/handlers/reducer\n' "$T" > "$T/handlers/slow-reducer"
chmod 755 "$T"/handlers/*
up --spores 4 --spore-args "--handlers $T/handlers" --nexus-args "--heartbeat 300ms"
mesh mapreduce --mapper slow-mapper --combiner combiner --reducer slow-reducer --reducers 6 --chunk-size 64K \
  --output "$T/wc" --merge --quiet "$T/corpus.txt" > "$T/mr.out" 2> "$T/mr.err" &
client=$!
extra_pids+=("$client")
wait_until 60 "the job to start" grep -q "^job " "$T/mr.err"
job=$(sed -n 's/^job \([0-9]*\):.*/\1/p' "$T/mr.err")
wait_until 60 "10 map tasks done" at_least_done "$job" 10
"$cluster" kill "$T/c" spore-1
reduce_started() { mesh status --json | grep -q "\"batch\":$((job + 1)),[^}]*\"running\":[1-9]"; }
wait_until 120 "the reduce stage to run" reduce_started
"$cluster" kill "$T/c" spore-2
check_word_count "$client" "the answer changed when spores died"
store_check "$job" "$(sql "SELECT total FROM batches WHERE id = $job")"
store_check "$((job + 1))" 6
[ "$(counter nodes_lost)" -ge 2 ] || fail "expected two lost spores"
note "identical answer with a spore killed in each stage"
