#!/usr/bin/env bash
# Word count over a corpus of several megabytes across 3 spores, compared with the same count
# made here with sort | uniq -c: identical.
. "$(dirname "$0")/lib.sh"
"$MESH_BUILD/examples/make-corpus" --bytes 6000000 > "$T/corpus.txt"
up --spores 3 --spore-args "--handlers $repo/examples/wordcount"
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
note "$(wc -l < "$T/expected") distinct words match"
