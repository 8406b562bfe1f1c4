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
if [ -z "${MESH_BUILD:-}" ]; then
  echo "building (installs missing Debian packages first)..."
  "$repo/scripts/build.sh" > /dev/null
fi
build=${MESH_BUILD:-$repo/build}
dir=$(mktemp -d "${TMPDIR:-/tmp}/hive-mesh-demo-XXXXXX")
trap '"$repo/scripts/cluster.sh" down "$dir/cluster" >/dev/null 2>&1 || true' EXIT
"$repo/scripts/cluster.sh" up --spores 3 --spore-args "--handlers $repo/examples/wordcount" "$dir/cluster"
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
awk -F'\t' '{ n++; s += $2 } END { printf "%d words, %d distinct\n", s, n }' "$dir/out/merged"
awk -v ns=$((end - start)) 'BEGIN { printf "map-reduce time: %.2f s (durable: every task result is in SQLite)\n", ns / 1e9 }'
echo "output: $dir/out/part-* (the cluster is stopped; the files stay)"
