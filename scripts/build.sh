#!/usr/bin/env bash
# Installs what is missing, then builds Hive Mesh into ./build (or $MESH_BUILD_DIR): everything,
# or only the ninja targets given (scripts/build.sh nodes/nexus nodes/spore).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${MESH_BUILD_DIR:-$repo/build}
"$repo/scripts/setup.sh"
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" "$repo" >/dev/null
fi
ninja -C "$build" "$@" >&2
