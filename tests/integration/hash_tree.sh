#!/usr/bin/env bash
# `mesh submit --files-from` (newline- and NUL-separated lists) and the hashing example
# examples/hashing/hash-tree.sh: a tree of files with awkward names is hashed across two spores
# and `sha256sum -c` accepts every line; a file over the payload limit is reported and skipped.
. "$(dirname "$0")/lib.sh"
up --spores 2 --nexus-args "--max-frame 4M --max-payload 1M"
hash_tree=$repo/examples/hashing/hash-tree.sh

# --files-from: one task per listed file, in list order; the two separators; bad lists.
mkdir -p "$T/list"
printf 'one' > "$T/list/a"
printf 'two' > "$T/list/b c"
printf '%s\n' "$T/list/b c" "$T/list/a" > "$T/lines"
expect_rc 0 mesh submit --handler sha256 --files-from "$T/lines" --results
[ "$(cut -f3 "$T/out" | tr '\n' ' ')" = "$(printf two | sha256sum | cut -c1-64) $(printf one | sha256sum | cut -c1-64) " ] ||
  fail "--files-from results: $(cat "$T/out")"
printf '%s\0' "$T/list/a" "$T/list/b c" | { expect_rc 0 mesh submit --handler sha256 --files-from - --null --results; }
[ "$(wc -l < "$T/out")" -eq 2 ] && grep -q "^1	ok	$(printf two | sha256sum | cut -c1-64)$" "$T/out" ||
  fail "--files-from - --null: $(cat "$T/out")"
printf '%s\n' "$T/list/a" "$T/list/missing" > "$T/bad"
expect_rc 2 mesh submit --handler sha256 --files-from "$T/bad"
grep -q "cannot read $T/list/missing: No such file" "$T/err" || fail "a missing listed file: $(cat "$T/err")"
expect_rc 2 mesh submit --handler sha256 --files-from "$T/nolist"
grep -q "cannot read the list of files $T/nolist" "$T/err" || fail "a missing list: $(cat "$T/err")"
expect_rc 2 mesh submit --handler sha256 --files-from "$T/lines" --lines "$T/lines"
expect_rc 2 mesh submit --handler sha256 --lines "$T/lines" --null

# The example: names with spaces, a TAB, a backslash and a newline, empty files, nested
# directories, more files than one batch; then the check by sha256sum itself.
tree=$T/tree
mkdir -p "$tree/sub dir/deeper" "$tree/empty dir"
for i in $(seq 1 40); do head -c $((i * 1531)) /dev/urandom > "$tree/sub dir/f$i"; done
printf 'x' > "$tree/sub dir/deeper/tab	name"
printf 'y' > "$tree/back\\slash"
printf 'z' > "$tree/new
line"
: > "$tree/empty"
expect_rc 0 "$hash_tree" --batch 16 --label hash-test "$tree"
cp "$T/out" "$T/sums"
[ "$(grep -c '' "$T/sums")" -eq 44 ] || fail "expected 44 sums, got $(grep -c '' "$T/sums"): $(head -5 "$T/sums")"
(cd / && sha256sum --check --quiet "$T/sums") || fail "sha256sum -c refused the example's output"
batches=$(mesh status --json | grep -o '"label":"hash-test"' | wc -l)
[ "$batches" -eq 3 ] || fail "44 files at --batch 16 should be 3 batches, saw $batches"

# A file over the nexus's --max-payload (1 MiB here): reported by name and skipped, exit 1;
# every other file is still hashed.
head -c $((1024 * 1024 + 1)) /dev/zero > "$tree/big"
expect_rc 1 "$hash_tree" --batch 16 "$tree"
grep -q "$tree/big: larger than the nexus's payload limit of 1048576 bytes" "$T/err" || fail "big file: $(cat "$T/err")"
cmp -s "$T/out" "$T/sums" || fail "with a file skipped, the other sums changed: $(diff "$T/out" "$T/sums" | head -5)"

# Usage errors.
expect_rc 2 "$hash_tree"
expect_rc 2 "$hash_tree" "$T/no-such-dir"
expect_rc 2 "$hash_tree" --batch 0 "$tree"
