#!/usr/bin/env bash
# Installs what Hive Mesh needs to build and test, from Debian's packages, if it is missing.
# Idempotent; prints nothing when everything is there. Needs root (or sudo) only to install.
set -euo pipefail

packages=(
  g++ meson ninja-build pkg-config
  libzmq3-dev cppzmq-dev
  libcapnp-dev capnproto
  libsodium-dev libsqlite3-dev
  libboost-program-options-dev doctest-dev
  iproute2 coreutils procps sqlite3
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}" >&2
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >&2
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
