#!/usr/bin/env bash
# Word count with serve handlers (build/examples/wordcount/serve: wc-map.serve and
# wc-reduce.serve, one long-lived process per handler and worker thread) across 2 spores,
# compared with sort | uniq -c. The spores' logs show that the map tasks did not start a process
# each. Then a signed bundle with both wc-map and wc-map.serve (the serve one wins) replaces the
# directory's handlers: the running processes are replaced by ones of the bundle's programs, and
# the count is right again. Once the spores have stopped, none of those processes is left.
. "$(dirname "$0")/lib.sh"
"$MESH_BUILD/examples/make-corpus" --bytes 6000000 > "$T/corpus.txt"
"$bin/mesh" keys gen --release "$T/release.key" > /dev/null
up --spores 2 --slots 2 --trust "$T/release.key.pub" \
  --spore-args "--handlers $MESH_BUILD/examples/wordcount/serve"
expect_rc 0 timeout 240 mesh mapreduce --mapper wc-map --reducer wc-reduce --reducers 3 \
  --chunk-size 256K --output "$T/wc" --merge "$T/corpus.txt"
tr -s ' \n' '\n\n' < "$T/corpus.txt" | grep -v '^$' | LC_ALL=C sort | uniq -c |
  awk '{ print $2 "\t" $1 }' > "$T/expected"
LC_ALL=C sort "$T/wc/merged" | cmp -s - "$T/expected" ||
  fail "the serve handlers disagree with sort | uniq -c: $(LC_ALL=C sort "$T/wc/merged" | diff - "$T/expected" | head -5)"
cat "$T"/wc/part-* | LC_ALL=C sort | cmp -s - "$T/expected" || fail "the parts do not add up to the answer"

# At least 22 map tasks (6 MB in chunks of at most 256 KiB) on 2 spores x 2 slots: each worker
# thread starts wc-map at most once (a process per task would be 22 or more starts).
map_tasks=$(( $(wc -c < "$T/corpus.txt") / 262144 ))
starts=$(cat "$T"/c/spore-*.log | grep -c 'serve handler wc-map: started pid' || true)
[ "$starts" -ge 1 ] || fail "no serve process was started for wc-map (see the spore logs)"
[ "$starts" -le 4 ] || fail "wc-map was started $starts times for $map_tasks+ map tasks on 4 slots"
reduce_starts=$(cat "$T"/c/spore-*.log | grep -c 'serve handler wc-reduce: started pid' || true)
[ "$reduce_starts" -ge 1 ] && [ "$reduce_starts" -le 3 ] ||
  fail "wc-reduce was started $reduce_starts times for 3 reduce tasks"
! grep -h 'serve handler .*killed' "$T"/c/spore-*.log || fail "a serve process was killed"

# A bundle with the one-shot and the serve programs: the bundle wins over the directory, and in
# the bundle wc-map.serve wins over wc-map. The next job's tasks go to new processes of the
# bundle's programs; the directory's processes are stopped before them.
mkdir "$T/bundle"
cp "$MESH_BUILD"/examples/wordcount/native/wc-{map,reduce} "$MESH_BUILD"/examples/wordcount/serve/wc-{map,reduce}.serve "$T/bundle/"
expect_rc 0 mesh bundle sign "$T/bundle" --name wcserve --version 1 --key "$T/release.key" \
  --expires 30d -o "$T/wcserve-1.bundle"
grep -q "handlers wc-map,wc-map.serve,wc-reduce,wc-reduce.serve" "$T/out" || fail "sign output: $(cat "$T/out")"
expect_rc 0 timeout 60 mesh bundle publish "$T/wcserve-1.bundle"
installed() { [ "$(cat "$T"/c/spore-*.log | grep -c 'installed bundle wcserve version 1')" -ge 2 ]; }
wait_until 30 "both spores to install the bundle" installed
expect_rc 0 timeout 240 mesh mapreduce --mapper wc-map --reducer wc-reduce --reducers 3 \
  --chunk-size 256K --output "$T/wc-bundle" --merge "$T/corpus.txt"
LC_ALL=C sort "$T/wc-bundle/merged" | cmp -s - "$T/expected" ||
  fail "the bundle's serve handlers disagree with sort | uniq -c"
bundle_starts=$(cat "$T"/c/spore-*.log | grep 'serve handler wc-map: started pid' | grep -c '/bundles/wcserve/' || true)
[ "$bundle_starts" -ge 1 ] && [ "$bundle_starts" -le 4 ] ||
  fail "wc-map of the bundle was started $bundle_starts times (expected 1 to 4 serve processes)"
grep -q 'serve handler wc-map: pid [0-9]* stopped (its program changed)' "$T"/c/spore-*.log ||
  fail "no directory process of wc-map was stopped for the bundle's program"

# The processes are still there (idle for less than 30 s); stopping the spores stops them.
pids=$(cat "$T"/c/spore-*.log | sed -n 's/.*serve handler wc-[a-z]*: started pid \([0-9]*\).*/\1/p')
alive=0
for p in $pids; do [ -d "/proc/$p" ] && alive=$((alive + 1)); done
[ "$alive" -ge 1 ] || fail "no serve process is alive right after the job (pids: $pids)"
"$cluster" down "$T/c" > /dev/null
none_left() { local p; for p in $pids; do [ ! -d "/proc/$p" ] || return 1; done; }
wait_until 10 "the serve processes to be gone after the spores stopped" none_left
note "$(wc -l < "$T/expected") distinct words match; wc-map started $starts times for $map_tasks+ map tasks, wc-reduce $reduce_starts times; from the bundle, wc-map started $bundle_starts times"
