#!/usr/bin/env bash
# `mesh submit --results`: a small batch's results come with its last Progress (no FetchResults
# round trip); a big one is paged; both print exactly what `mesh results` prints.
. "$(dirname "$0")/lib.sh"
up --spores 2
printf 'alpha\nbeta\ngamma\n' > "$T/small"
pages=$(counter result_pages)
mesh submit --handler sha256 --lines "$T/small" --results > "$T/out" 2> "$T/err" || fail "submit --results failed: $(cat "$T/err")"
for w in alpha beta gamma; do printf '%s' "$w" | sha256sum | cut -d' ' -f1; done > "$T/expected"
[ "$(cut -f1,2 "$T/out" | tr '\t\n' ' ')" = "0 ok 1 ok 2 ok " ] || fail "unexpected rows: $(cat "$T/out")"
cmp -s <(cut -f3 "$T/out") "$T/expected" || fail "digests differ: $(cat "$T/out")"
batch=$(sed -n 's/^batch \([0-9]*\)$/\1/p' "$T/err")
[ -n "$batch" ] || fail "the batch id did not reach stderr: $(cat "$T/err")"
cmp -s "$T/out" <(mesh results "$batch") || fail "submit --results and mesh results disagree"
[ "$(counter result_pages)" -eq $((pages + 1)) ] || fail "a small batch's results were fetched, not carried by its last Progress"
[ "$(counter results_with_finished)" -ge 1 ] || fail "no Progress carried results"
# --json and --raw as for `mesh results`; a failed task: exit 1, its error in the output.
mesh submit --handler echo --lines "$T/small" --results --json 2>/dev/null | grep -c '"status":"ok"' | grep -qx 3 || fail "--json rows wrong"
[ "$(mesh submit --handler echo --lines "$T/small" --results --raw 2>/dev/null)" = "alphabetagamma" ] || fail "--raw output wrong"
# -q silences progress, not the batch id (a script needs it to look the batch up).
mesh submit --handler echo --lines "$T/small" --results -q > /dev/null 2> "$T/err" || fail "submit --results -q failed"
grep -qx 'batch [0-9]*' "$T/err" || fail "-q lost the batch id: $(cat "$T/err")"
printf 'boom\n' > "$T/boom"
expect_rc 1 mesh submit --handler fail --lines "$T/boom" --attempts 1 --results -q
mesh submit --handler fail --lines "$T/boom" --attempts 1 --results -q > "$T/failed" || true
grep -q $'^0\tfailed\tboom' "$T/failed" || fail "the failed task's row is wrong: $(cat "$T/failed")"
# Over the inline limit (1,000 rows): paged, every row, in order.
seq 1 2500 > "$T/big"
pages=$(counter result_pages)
mesh submit --handler echo --lines "$T/big" --results --json 2>/dev/null > "$T/bigout" || fail "big submit --results failed"
[ "$(wc -l < "$T/bigout")" -eq 2500 ] || fail "expected 2500 rows, got $(wc -l < "$T/bigout")"
cmp -s <(grep -o '"index":[0-9]*' "$T/bigout" | cut -d: -f2) <(seq 0 2499) || fail "big results out of order"
[ "$(counter result_pages)" -ge $((pages + 3)) ] || fail "a 2,500-task batch was not paged"
# --limit stops early, wherever the rows come from.
[ "$(mesh submit --handler echo --lines "$T/big" --results --limit 5 2>/dev/null | wc -l)" -eq 5 ] || fail "--limit ignored (paged)"
[ "$(mesh submit --handler echo --lines "$T/small" --results --limit 2 2>/dev/null | wc -l)" -eq 2 ] || fail "--limit ignored (inline)"
note "small batches' results rode with their last Progress; a 2,500-task batch was paged"
