#!/usr/bin/env bash
# The main job, on one machine: install what is missing, build, start a local nexus and three
# spores (real keys, a real SQLite file, real processes on 127.0.0.1), generate a text corpus
# (deterministic), count its words with a map-reduce across the spores, print the top words and
# the time, stop the cluster.
#
#   scripts/demo.sh [CORPUS_BYTES]      (default 20000000)
#
# With MESH_BUILD set (the test suite does), it uses the binaries built there and builds nothing.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bytes=${1:-20000000}
[[ $bytes =~ ^[0-9]+$ ]] || { echo "usage: scripts/demo.sh [CORPUS_BYTES]" >&2; exit 2; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/hive-mesh-demo-XXXXXX")
if [ -z "${MESH_BUILD:-}" ]; then
  # Only what the demo runs (the test command builds the rest): the first time, a few minutes on
  # 2 cores, after the Debian packages are in.
  echo "building nexus, spore and mesh (the first time takes a few minutes; log: $dir/build.log)..."
  if ! "$repo/scripts/build.sh" nodes/nexus nodes/spore nodes/mesh examples/make-corpus > "$dir/build.log" 2>&1; then
    tail -20 "$dir/build.log" >&2
    echo "demo: the build failed (whole log: $dir/build.log)" >&2
    exit 1
  fi
fi
build=${MESH_BUILD:-$repo/build}
# At the end, whatever happens: the cluster stopped by its pids, and its data (keys, nexus.db,
# the payload log) and the corpus removed; the output and the logs stay.
cleanup() {
  "$repo/scripts/cluster.sh" down "$dir/cluster" > /dev/null 2>&1 || true
  rm -rf "$dir/corpus.txt" "$dir/cluster/nexus" "$dir"/cluster/spore-*/
}
trap cleanup EXIT
echo "starting a nexus and 3 spores on 127.0.0.1 (logs: $dir/cluster/*.log)..."
if ! "$repo/scripts/cluster.sh" up --spores 3 --spore-args "--handlers $repo/examples/wordcount" "$dir/cluster" \
  > "$dir/cluster.log" 2>&1; then
  cat "$dir/cluster.log" >&2
  exit 1
fi
# shellcheck disable=SC1091
. "$dir/cluster/env"
"$build/examples/make-corpus" --bytes "$bytes" > "$dir/corpus.txt"
echo "counting the words of a $((bytes / 1000000)) MB corpus across 3 spores..."
start=$(date +%s%N)
"$repo/scripts/mapreduce.sh" -m mapper -c combiner -r reducer -R 6 -s 256K -o "$dir/out" "$dir/corpus.txt"
end=$(date +%s%N)
echo
echo "top 10 words:"
# awk, not head: head would stop reading, and sort's SIGPIPE fails the script under pipefail.
LC_ALL=C sort -t "$(printf '\t')" -k2,2nr -k1,1 "$dir/out/merged" | awk -F'\t' 'NR <= 10 { printf "  %-12s %d\n", $1, $2 }'
got=$(awk -F'\t' '{ s += $2 } END { print s + 0 }' "$dir/out/merged")
want=$(wc -w < "$dir/corpus.txt")
if [ "$got" -ne "$want" ]; then
  echo "demo: the map-reduce counted $got words, but wc -w counts $want" >&2
  exit 1
fi
awk -F'\t' -v want="$want" '{ n++ } END { printf "%d words (as wc -w counts them), %d distinct\n", want, n }' "$dir/out/merged"
awk -v ns=$((end - start)) 'BEGIN { printf "map-reduce time: %.2f s, with the shell and awk handlers of examples/wordcount (a process per task;\n  the compiled serve handlers are faster: docs/benchmarks.md, D); every task result durable in SQLite\n", ns / 1e9 }'
echo "output: $dir/out/part-* and merged (the cluster is stopped and its data removed; logs in $dir/cluster)"
