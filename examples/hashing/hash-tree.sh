#!/usr/bin/env bash
# hash-tree.sh: the SHA-256 of every file under the given paths, computed across the mesh.
# Prints what `sha256sum` prints ("HASH  PATH" lines, sorted by path), so that
# `hash-tree.sh DIR > SUMS && sha256sum -c SUMS` checks the result locally.
#
#   hash-tree.sh [--batch N] [--priority P] [--label L] PATH...
#
# Connection: MESH_NEXUS, MESH_NEXUS_KEY and MESH_KEY, or a cluster's env file
# (`. DIR/env` after `scripts/cluster.sh up DIR`). `mesh` is taken from PATH, or from $MESH.
# Files go --batch at a time (1000 by default) in one batch each: one task per file, the
# built-in sha256 handler, the file's bytes as the payload. Files over the nexus's payload
# limit (`mesh status`) are reported and skipped. Exit codes as `mesh`: 0 all
# hashed, 1 some failed (their lines go to stderr), 2 usage, 3 cannot reach the nexus.
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

mesh=${MESH:-mesh}
per_batch=1000
submit_opts=()
paths=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage ;;
    --batch) [ $# -ge 2 ] || usage; per_batch=$2; shift 2 ;;
    --priority|--label) [ $# -ge 2 ] || usage; submit_opts+=("$1" "$2"); shift 2 ;;
    --) shift; paths+=("$@"); break ;;
    -*) echo "hash-tree.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) paths+=("$1"); shift ;;
  esac
done
[ ${#paths[@]} -gt 0 ] || usage
case "$per_batch" in ''|*[!0-9]*|0) echo "hash-tree.sh: --batch takes a positive number" >&2; exit 2 ;; esac
for p in "${paths[@]}"; do
  [ -e "$p" ] || { echo "hash-tree.sh: $p: no such file or directory" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The nexus's payload limit: a larger file cannot be a task (it is reported, not sent).
limit=$("$mesh" status --json | sed -n 's/.*"max_payload_bytes":\([0-9]*\).*/\1/p') || exit $?
case "$limit" in ''|0) limit=$((16 << 20)) ;; esac  # a nexus too old to say: its default
status=0
while IFS= read -r -d '' big; do
  echo "hash-tree.sh: $big: larger than the nexus's payload limit of $limit bytes (its --max-payload): not hashed" >&2
  status=1
done < <(find "${paths[@]}" -type f -size +"$limit"c -print0 | LC_ALL=C sort -z)

# Every other regular file, NUL-separated (any byte but NUL may be in a name), sorted by path.
find "${paths[@]}" -type f -size -"$((limit + 1))"c -print0 | LC_ALL=C sort -z > "$work/all"
mapfile -d '' files < "$work/all"
total=${#files[@]}
if [ "$total" -eq 0 ]; then
  echo "hash-tree.sh: no files to hash under ${paths[*]}" >&2
  exit "$status"
fi

# sha256sum's format: a name with a backslash or a newline is escaped and the line starts with
# a backslash, so that `sha256sum -c` reads it back.
print_sum() {
  local hash=$1 name=$2
  case "$name" in
    *\\*|*$'\n'*)
      name=${name//\\/\\\\}
      name=${name//$'\n'/\\n}
      printf '\\%s  %s\n' "$hash" "$name" ;;
    *) printf '%s  %s\n' "$hash" "$name" ;;
  esac
}

done_count=0
for ((first = 0; first < total; first += per_batch)); do
  group=("${files[@]:first:per_batch}")
  printf '%s\0' "${group[@]}" > "$work/group"
  # `mesh submit --results` prints "INDEX<TAB>STATUS<TAB>OUTPUT" lines in submission order
  # (exit 1: some failed, or nothing was submitted, e.g. a file over the payload limit).
  rc=0
  "$mesh" submit --handler sha256 --files-from "$work/group" --null --results --quiet \
    "${submit_opts[@]}" > "$work/results" 2> "$work/err" || rc=$?
  grep -v '^batch [0-9]*$' "$work/err" >&2 || true  # the batch ids are not news here
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then exit "$rc"; fi
  hashed=0
  while IFS=$'\t' read -r index state output; do
    if [ "$state" = ok ]; then
      print_sum "$output" "${group[index]}"
      hashed=$((hashed + 1))
    else
      echo "hash-tree.sh: ${group[index]}: $state: $output" >&2
    fi
  done < "$work/results"
  if [ "$hashed" -ne ${#group[@]} ]; then
    status=1
    echo "hash-tree.sh: $((${#group[@]} - hashed)) of files $((first + 1))-$((first + ${#group[@]})) not hashed" >&2
  fi
  done_count=$((done_count + ${#group[@]}))
  if [ -t 2 ]; then printf 'hash-tree.sh: %d/%d files\r' "$done_count" "$total" >&2; fi
done
if [ -t 2 ]; then printf '\n' >&2; fi
exit "$status"
