#!/usr/bin/env bash
# The shell scripts a user runs first: their usage text, and a cluster directory used again.
. "$(dirname "$0")/lib.sh"
# mapreduce.sh: -h and --help print the usage on stdout and exit 0; a bad option exits 2.
expect_rc 0 "$repo/scripts/mapreduce.sh" --help
grep -q "scripts/mapreduce.sh -m MAPPER -r REDUCER" "$T/out" || fail "mapreduce.sh --help has no usage: $(cat "$T/out")"
! grep -q "set -euo" "$T/out" || fail "mapreduce.sh --help prints a line of the script: $(cat "$T/out")"
expect_rc 0 "$repo/scripts/mapreduce.sh" -h
expect_rc 2 "$repo/scripts/mapreduce.sh" -x
grep -q "scripts/mapreduce.sh -m MAPPER" "$T/err" || fail "a bad option does not show the usage: $(cat "$T/err")"
# The README brings a cluster up, down, and up again in the same directory: the second up uses
# its keys again (it stopped at "operator.key exists already", leaving the nexus running).
up --spores 1
"$cluster" down "$T/c"
up --spores 2
[ "$(mesh nodes --json | grep -c '"name"')" -eq 2 ] || fail "the cluster brought up again has not 2 spores"
batch=$(seq 1 5 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 30 mesh wait "$batch"
note "script usage is printed whole, and a cluster directory can be brought up again"
