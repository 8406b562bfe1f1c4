#!/usr/bin/env bash
# The test command: installs what is missing, builds, runs every test (unit, integration,
# hostile input), and ends with one line "N passed, N failed". Exit status 0 only if all pass.
# Extra arguments go to `meson test` (e.g. --suite unit).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${MESH_BUILD_DIR:-$repo/build}
"$repo/scripts/build.sh"
set +e
meson test -C "$build" --print-errorlogs --num-processes 2 "$@"
status=$?
set -e
log="$build/meson-logs/testlog.json"
if [ ! -f "$log" ]; then
  echo "0 passed, 1 failed"
  exit 1
fi
passed=$(grep -c '"result": "OK"' "$log" || true)
skipped=$(grep -c '"result": "SKIP"' "$log" || true)
total=$(grep -c '"result": ' "$log" || true)
failed=$((total - passed - skipped))
if [ "$skipped" -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
if [ "$failed" -ne 0 ] || [ "$status" -ne 0 ] || [ "$total" -eq 0 ]; then exit 1; fi
