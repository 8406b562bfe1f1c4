#!/usr/bin/env bash
# The README's first command (scripts/demo.sh, on the binaries already built): it exits 0, prints
# the top 10 words, and counts exactly the words of its corpus. Its cluster is stopped by the
# script itself; if the demo dies first, its cluster directory is stopped here by its pids.
. "$(dirname "$0")/lib.sh"
set +e
TMPDIR=$T timeout 240 "$repo/scripts/demo.sh" 3000000 > "$T/demo.out" 2> "$T/demo.err"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  for d in "$T"/hive-mesh-demo-*/cluster; do "$cluster" down "$d" > /dev/null 2>&1 || true; done
  fail "scripts/demo.sh exited $rc: $(tail -5 "$T/demo.err")"
fi
demo_dir=$(echo "$T"/hive-mesh-demo-*)
[ -d "$demo_dir" ] || fail "the demo left no output directory"
grep -A10 '^top 10 words:' "$T/demo.out" | awk 'NR > 1 && NF == 2 && $2 ~ /^[0-9]+$/' | wc -l | grep -qx 10 ||
  fail "the demo did not print 10 words with counts: $(cat "$T/demo.out")"
# The corpus is deterministic: made again here, counted by wc (the demo removed its copy).
want=$("$MESH_BUILD/examples/make-corpus" --bytes 3000000 | wc -w)
got=$(awk -F'\t' '{ s += $2 } END { print s }' "$demo_dir/out/merged")
[ "$got" -eq "$want" ] || fail "the demo counted $got words, the corpus has $want"
grep -q "^$want words (as wc -w counts them), " "$T/demo.out" || fail "the demo's summary line is wrong: $(grep words "$T/demo.out")"
if pgrep -f "$demo_dir/cluster" > /dev/null; then fail "the demo left processes running"; fi
# It leaves its output and logs, not its data: no corpus, no nexus.db, no keys, no payload log.
[ ! -e "$demo_dir/corpus.txt" ] && [ ! -e "$demo_dir/cluster/nexus" ] && ! ls -d "$demo_dir"/cluster/spore-*/ > /dev/null 2>&1 ||
  fail "the demo left its data behind: $(ls -R "$demo_dir" | head -20)"
ls "$demo_dir"/cluster/*.log > /dev/null || fail "the demo removed its logs"
grep -q "cluster up in\|run: \. " "$T/demo.out" && fail "the demo tells to use a cluster it has stopped: $(cat "$T/demo.out")"
note "demo: $want words counted, $(grep 'map-reduce time' "$T/demo.out")"
