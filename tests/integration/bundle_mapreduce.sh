#!/usr/bin/env bash
# Map-reduce with the mapper, combiner and reducer from a signed bundle (examples/wordcount
# signed as is): no --handlers directory on the spores; the counts match sort | uniq -c.
. "$(dirname "$0")/lib.sh"
mesh_bin=$bin/mesh
"$mesh_bin" keys gen --release "$T/release.key" > /dev/null
expect_rc 0 "$mesh_bin" bundle sign "$repo/examples/wordcount" --name wordcount --version 7 --key "$T/release.key" \
  --expires 30d -o "$T/wordcount-7.bundle"
grep -q "handlers combiner,mapper,reducer" "$T/out" || fail "sign output: $(cat "$T/out")"
"$MESH_BUILD/examples/make-corpus" --bytes 2000000 > "$T/corpus.txt"
up --spores 3 --trust "$T/release.key.pub"
expect_rc 0 timeout 60 mesh bundle publish "$T/wordcount-7.bundle"
offered() { [ "$(mesh nodes --json --timeout 2s | grep '"mapper"' | grep '"reducer"' | grep -c '"combiner"')" -ge 3 ]; }
wait_until 30 "3 spores to offer the wordcount handlers" offered
expect_rc 0 timeout 240 mesh mapreduce --mapper mapper --combiner combiner --reducer reducer --reducers 3 \
  --chunk-size 256K --output "$T/wc" --merge "$T/corpus.txt"
tr -s ' \n' '\n\n' < "$T/corpus.txt" | grep -v '^$' | LC_ALL=C sort | uniq -c |
  awk '{ print $2 "\t" $1 }' > "$T/expected"
LC_ALL=C sort "$T/wc/merged" > "$T/got"
cmp -s "$T/expected" "$T/got" || fail "word counts differ: $(diff "$T/expected" "$T/got" | head -5)"
note "$(wc -l < "$T/expected") distinct words match, handlers from bundle wordcount 7"
