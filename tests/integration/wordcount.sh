#!/usr/bin/env bash
# Word count over a corpus of several megabytes across 3 spores, compared with the same count
# made here with sort | uniq -c: identical.
. "$(dirname "$0")/lib.sh"
"$MESH_BUILD/examples/make-corpus" --bytes 6000000 > "$T/corpus.txt"
# The portable sh+awk handlers and the compiled ones, side by side in one handler directory.
mkdir -p "$T/handlers"
cp "$repo"/examples/wordcount/{mapper,combiner,reducer} "$MESH_BUILD"/examples/wordcount/native/wc-{map,reduce} "$T/handlers/"
up --spores 3 --spore-args "--handlers $T/handlers"
expect_rc 0 timeout 240 mesh mapreduce --mapper mapper --combiner combiner --reducer reducer --reducers 4 \
  --chunk-size 256K --output "$T/wc" --merge "$T/corpus.txt"
ls "$T"/wc/part-0000[0-3] > /dev/null || fail "missing part files: $(ls "$T/wc")"
tr -s ' \n' '\n\n' < "$T/corpus.txt" | grep -v '^$' | LC_ALL=C sort | uniq -c |
  awk '{ print $2 "\t" $1 }' > "$T/expected"
LC_ALL=C sort "$T/wc/merged" > "$T/got"
cmp -s "$T/expected" "$T/got" || fail "word counts differ: $(diff "$T/expected" "$T/got" | head -5)"
LC_ALL=C sort -c "$T/wc/merged" 2>/dev/null || LC_ALL=C sort -c -t "$(printf '\t')" -k1,1 "$T/wc/merged" ||
  fail "merged output is not sorted"
cat "$T"/wc/part-* | LC_ALL=C sort | cmp -s - "$T/expected" || fail "the parts do not add up to the answer"
# The compiled handlers (the mapper combines in itself) give the same answer.
expect_rc 0 timeout 240 mesh mapreduce --mapper wc-map --reducer wc-reduce --reducers 3 --chunk-size 256K \
  --output "$T/native" --merge "$T/corpus.txt"
LC_ALL=C sort "$T/native/merged" | cmp -s - "$T/expected" || fail "wc-map/wc-reduce disagree with sort | uniq -c"
note "$(wc -l < "$T/expected") distinct words match, with the awk and the compiled handlers"
