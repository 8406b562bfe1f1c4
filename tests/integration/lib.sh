# Shared by the integration tests: a temporary directory, a cluster that is always stopped,
# assertions, and waits with deadlines. Source it; MESH_BUILD is set by meson.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export MESH_BUILD=${MESH_BUILD:-$repo/build}
bin=$MESH_BUILD/nodes
cluster=$repo/scripts/cluster.sh
T=$(mktemp -d "${TMPDIR:-/tmp}/mesh-it-XXXXXX")
extra_pids=()

cleanup() {
  local rc=$?
  "$cluster" down "$T/c" >/dev/null 2>&1 || true
  local p
  for p in "${extra_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "${at_exit:-}" ]; then eval "$at_exit" || true; fi  # a test's own clean-up, after its processes
  if [ $rc -ne 0 ]; then
    echo "--- logs of the failed test ($T) ---" >&2
    for f in "$T"/c/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -25 "$f" >&2; }; done
  fi
  [ -n "${KEEP:-}" ] || rm -rf "$T"
  exit $rc
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
note() { echo "# $*"; }

# expect_rc WANT CMD...: runs CMD, fails the test unless it exits with WANT. Output in $T/out, $T/err.
expect_rc() {
  local want=$1
  shift
  set +e
  "$@" > "$T/out" 2> "$T/err"
  local rc=$?
  set -e
  [ "$rc" -eq "$want" ] || fail "'$*' exited $rc, expected $want; stderr: $(head -c 600 "$T/err")"
}

# wait_until SECONDS DESCRIPTION CMD...: polls CMD every 100 ms until it succeeds.
wait_until() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${seconds}s waiting for $what"
    sleep 0.1
  done
}

up() {
  "$cluster" up "$@" "$T/c" > /dev/null
  # shellcheck disable=SC1091
  . "$T/c/env"
}

# counter NAME: a counter of `mesh status --json` (0 while the nexus has not counted any).
counter() {
  local s
  s=$(mesh status --json) || fail "mesh status failed"
  { grep -o "\"$1\":[0-9]*" <<< "$s" || true; } | cut -d: -f2 | awk '{ v = $1 } END { print v + 0 }'
}

# sql QUERY: runs a query on the nexus's SQLite file (read while the nexus runs: WAL allows it).
sql() { sqlite3 -cmd ".timeout 5000" "$T/c/nexus/nexus.db" "$1"; }

# store_check BATCH TOTAL: from the store, not from logs: the batch has TOTAL tasks and every one
# has exactly one recorded result (the results table's key is the task id, so two results for
# one task cannot be stored; a missing one or one for an unknown task fails the test).
store_check() {
  local batch=$1 total=$2
  local tasks results missing orphans
  tasks=$(sql "SELECT COUNT(*) FROM tasks WHERE batch = $batch")
  results=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $batch")
  missing=$(sql "SELECT COUNT(*) FROM tasks t WHERE t.batch = $batch AND NOT EXISTS (SELECT 1 FROM results r WHERE r.task = t.id)")
  orphans=$(sql "SELECT COUNT(*) FROM results r WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = r.task)")
  [ "$tasks" -eq "$total" ] || fail "batch $batch has $tasks tasks in the store, expected $total"
  [ "$missing" -eq 0 ] || fail "$missing tasks of batch $batch have no result"
  [ "$results" -eq "$total" ] || fail "batch $batch has $results results for $total tasks"
  [ "$orphans" -eq 0 ] || fail "$orphans results belong to no task"
  # The client sees the same: every index once (the row's own, not a retry's "retry_of" index).
  { mesh results "$batch" --json || true; } | grep -o '^{"task":[0-9]*,"index":[0-9]*' | cut -d: -f3 | sort -n | uniq -c |
    awk -v n="$total" '$1 != 1 { bad = 1 } END { exit (bad || NR != n) }' ||
    fail "mesh results does not list each of the $total tasks exactly once"
}

# done_count BATCH: tasks of the batch with a durable final result, from `mesh status`.
done_count() {
  mesh status --json --timeout 2s | grep -o "{\"batch\":$1,[^}]*}" |
    awk -F'[:,]' '{ for (i = 1; i < NF; i++) { if ($i ~ /succeeded|failed|cancelled/) s += $(i + 1) } } END { print s + 0 }'
}

at_least_done() { [ "$(done_count "$1")" -ge "$2" ]; }

pid_of() { awk -v n="$1" '$1 == n { p = $2 } END { print p }' "$T/c/pids"; }

# gate_handler DIR: writes DIR/gate, a handler whose payload is a file name: it waits for that
# file (at most 60 s), prints its name, and leaves its pid in FILE.ran. A test opens the gate by
# creating the file.
gate_handler() {
  mkdir -p "$1"
  cat > "$1/gate" <<'EOF'
#!/bin/sh
read -r f
i=0
while [ ! -e "$f" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
echo "$f"
echo $$ > "$f.ran"
EOF
  chmod +x "$1/gate"
}

# long_task_start BATCH INDEX: the start (ms) of task INDEX of BATCH, once checked that it ran
# about 3 s (the long task of the tests of runs on a spore). Use as `started=$(long_task_start
# ...)`: a failed check ends the test.
long_task_start() {
  local started us
  started=$(sql "SELECT r.started_ms FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $1 AND t.idx = $2")
  us=$(sql "SELECT r.duration_us FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $1 AND t.idx = $2")
  [ -n "$started" ] && [ "$started" -gt 0 ] || fail "batch $1: no start time for the long task $2"
  [ "$us" -ge 2900000 ] || fail "batch $1: the long task $2 took $us µs, not about 3 s"
  echo "$started"
}

# word_counts FILE: "word<TAB>count" lines of FILE's whitespace-separated words, sorted bytewise
# (what a word-count map-reduce of FILE must produce, merged).
word_counts() {
  tr -s ' \n' '\n\n' < "$1" | grep -v '^$' | LC_ALL=C sort | uniq -c | awk '{ print $2 "\t" $1 }'
}

# check_word_count PID WHY: waits for the word-count `mesh mapreduce` running as PID (input
# $T/corpus.txt, output $T/wc, stderr $T/mr.err): it must succeed with the right counts, or the
# test fails with WHY.
check_word_count() {
  local rc
  set +e
  wait "$1"
  rc=$?
  set -e
  [ "$rc" -eq 0 ] || fail "mapreduce exited $rc: $(cat "$T/mr.err")"
  word_counts "$T/corpus.txt" > "$T/expected"
  LC_ALL=C sort "$T/wc/merged" | cmp -s - "$T/expected" || fail "$2"
}
