#!/usr/bin/env bash
# Chaos: while a big hashing batch, a batch of short sleeps and a word-count map-reduce run,
# SIGKILL spores (each replaced by a new one) and the nexus (restarted on the same data dir) at
# random moments (one kill in four is the nexus's) for CHAOS_SECONDS (default 20). Then every task has exactly one recorded
# result, every hash is right, and the map-reduce client (which rode out the nexus restarts)
# wrote the right word count. CHAOS_SEED repeats a run's sequence of choices (not its timing).
. "$(dirname "$0")/lib.sh"
seconds=${CHAOS_SECONDS:-20}
seed=${CHAOS_SEED:-$$}
RANDOM=$seed
note "seed $seed, ${seconds}s of chaos"
"$MESH_BUILD/examples/make-corpus" --bytes 16000000 > "$T/corpus.txt"
up --spores 3 --slots 2 --nexus-args "--heartbeat 300ms" \
  --spore-args "--handlers $MESH_BUILD/examples/wordcount/serve"
hashes=$(seq 1 200000 | mesh submit --handler sha256 --lines -)
sleeps=$(printf '60\n%.0s' $(seq 1500) | mesh submit --handler sleep --lines -)
mesh mapreduce --mapper wc-map --reducer wc-reduce --reducers 3 --chunk-size 100K \
  --output "$T/wc" "$T/corpus.txt" > "$T/mr.out" 2> "$T/mr.err" &
mr=$!
extra_pids+=("$mr")

spore_kills=0 nexus_kills=0 next=10
deadline=$((SECONDS + seconds))
for event in $(seq 1000); do
  [ $SECONDS -lt $deadline ] || break
  sleep "0.$((RANDOM % 8 + 2))"  # a random moment, not a synchronisation
  if [ $((event % 4)) -eq 3 ]; then  # one event in four kills the nexus
    "$cluster" kill "$T/c" nexus
    nexus_kills=$((nexus_kills + 1))
    "$cluster" restart-nexus "$T/c" > /dev/null
  else
    # The victim: a spore still running (the cluster's pids file names each one).
    victim=$(awk '$1 ~ /^spore/ { print $1, $2 }' "$T/c/pids" |
      while read -r name pid; do kill -0 "$pid" 2>/dev/null && echo "$name"; done | sort |
      awk -v r=$RANDOM '{ n[NR] = $1 } END { if (NR) print n[r % NR + 1] }')
    [ -n "$victim" ] || fail "no spore left running"
    "$cluster" kill "$T/c" "$victim"
    spore_kills=$((spore_kills + 1))
    "$cluster" add-spore "$T/c" "spore-$next" --slots 2 > /dev/null
    next=$((next + 1))
  fi
done
note "$spore_kills spores and the nexus $nexus_kills times killed; done by then: $(done_count "$hashes") hashes, $(done_count "$sleeps") sleeps"
[ "$spore_kills" -ge 3 ] && [ "$nexus_kills" -ge 1 ] || [ "$seconds" -lt 10 ] ||
  fail "too little chaos: $spore_kills spore kills, $nexus_kills nexus kills"

expect_rc 0 timeout 300 mesh wait "$hashes" --quiet
expect_rc 0 timeout 300 mesh wait "$sleeps" --quiet
mr_ended() { ! kill -0 "$mr" 2>/dev/null; }
wait_until 300 "mesh mapreduce to end" mr_ended
set +e
wait "$mr"
rc=$?
set -e
[ "$rc" -eq 0 ] || fail "mesh mapreduce exited $rc: $(tail -3 "$T/mr.err")"

store_check "$hashes" 200000
store_check "$sleeps" 1500
mesh results "$hashes" | cut -f3 > "$T/hashes.got"
python3 - "$T/hashes.got" <<'PY' || fail "wrong hashes"
import hashlib, sys
got = open(sys.argv[1]).read().split("\n")[:-1]
wrong = [i for i, h in enumerate(got) if h != hashlib.sha256(str(i + 1).encode()).hexdigest()]
if len(got) != 200000 or wrong:
    sys.exit(f"{len(got)} results, {len(wrong)} wrong, first at index {wrong[:1]}")
PY
cat "$T"/wc/part-* | LC_ALL=C sort > "$T/wc.got"
tr -s ' \t' '\n\n' < "$T/corpus.txt" | grep -v '^$' | LC_ALL=C sort | uniq -c |
  awk '{ print $2 "\t" $1 }' | LC_ALL=C sort > "$T/wc.want"
cmp -s "$T/wc.got" "$T/wc.want" ||
  fail "the word count differs: $(wc -l < "$T/wc.got") words counted, $(wc -l < "$T/wc.want") expected"
note "lost=$(counter nodes_lost) requeued=$(counter tasks_requeued) duplicates=$(counter results_duplicate)"
