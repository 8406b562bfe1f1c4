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

# counter NAME: a counter of `mesh status --json`.
counter() {
  mesh status --json | grep -o "\"$1\":[0-9]*" | cut -d: -f2 | head -1 | sed 's/^$/0/'
}
