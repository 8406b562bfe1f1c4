#!/usr/bin/env bash
# The main job, on one machine: install what is missing, build, start a local nexus and two
# spores (real keys, a real SQLite file, real processes on 127.0.0.1), run a batch, print the
# answer, stop the cluster.
#
# Until the word count lands (map-reduce), the job hashes 100,000 lines with sha256.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/build.sh" 2>/dev/null || "$repo/scripts/build.sh"
dir=$(mktemp -d "${TMPDIR:-/tmp}/hive-mesh-demo-XXXXXX")
trap '"$repo/scripts/cluster.sh" down "$dir/cluster" >/dev/null 2>&1 || true' EXIT
"$repo/scripts/cluster.sh" up --spores 2 "$dir/cluster"
# shellcheck disable=SC1091
. "$dir/cluster/env"
n=100000
echo "hashing $n lines across 2 spores..."
start=$(date +%s.%N)
batch=$(seq 1 $n | mesh submit --handler sha256 --lines -)
mesh wait "$batch"
end=$(date +%s.%N)
mesh results "$batch" --json > "$dir/results.jsonl"
ok=$(grep -c '"status":"ok"' "$dir/results.jsonl")
echo
awk -v b="$batch" -v ok="$ok" -v n="$n" -v s="$start" -v e="$end" \
  'BEGIN { printf "batch %s: %d of %d tasks succeeded in %.2f s (%.0f tasks/s, durable)\n", b, ok, n, e - s, n / (e - s) }'
echo "first results (line: sha256):"
head -3 "$dir/results.jsonl" | sed -E 's/.*"index":([0-9]+).*"output":"([0-9a-f]+)".*/\1 \2/' |
  awk '{ printf "  %d: %s\n", $1 + 1, $2 }'
echo "  (independently: sha256 of \"1\" is $(printf 1 | sha256sum | cut -c1-64))"
mesh nodes
