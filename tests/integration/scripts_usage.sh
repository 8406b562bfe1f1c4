#!/usr/bin/env bash
# What a user runs first: the scripts' usage text, a cluster directory used again, and the
# example config files of examples/deploy.
. "$(dirname "$0")/lib.sh"
# mapreduce.sh: -h and --help print the usage on stdout and exit 0; a bad option exits 2.
expect_rc 0 "$repo/scripts/mapreduce.sh" --help
grep -q "scripts/mapreduce.sh -m MAPPER -r REDUCER" "$T/out" || fail "mapreduce.sh --help has no usage: $(cat "$T/out")"
! grep -q "set -euo" "$T/out" || fail "mapreduce.sh --help prints a line of the script: $(cat "$T/out")"
expect_rc 0 "$repo/scripts/mapreduce.sh" -h
expect_rc 2 "$repo/scripts/mapreduce.sh" -x
grep -q "scripts/mapreduce.sh -m MAPPER" "$T/err" || fail "a bad option does not show the usage: $(cat "$T/err")"
# examples/deploy/*.conf show every option of --help (their README says so), and each line,
# uncommented, parses: the program gets as far as its data dir.
for p in nexus spore; do
  conf=$repo/examples/deploy/$p.conf
  for o in $("$bin/$p" --help | grep -o '^  --[a-z-]*' | sed 's/^  --//'); do
    [ "$o" = help ] || [ "$o" = config ] || grep -qE "^(# )?$o =" "$conf" || fail "$conf does not show the option $o"
  done
  sed -E 's/^# ([a-z-]+ = )/\1/' "$conf" |
    grep -vE '^(data-dir|trust|nexus|interface|handlers|advertise|beacon-target) ' > "$T/$p.conf"
  expect_rc 1 "$bin/$p" --config "$T/$p.conf" --data-dir /proc/no-such-dir
  grep -q "cannot create data dir /proc/no-such-dir" "$T/err" || fail "$p.conf does not parse: $(cat "$T/err")"
done
# The README brings a cluster up, down, and up again in the same directory: the second up uses
# its keys again (it stopped at "operator.key exists already", leaving the nexus running).
up --spores 1
"$cluster" down "$T/c"
up --spores 2
[ "$(mesh nodes --json | grep -c '"name"')" -eq 2 ] || fail "the cluster brought up again has not 2 spores"
batch=$(seq 1 5 | mesh submit --handler echo --lines -)
expect_rc 0 timeout 30 mesh wait "$batch"
note "script usage is printed whole, and a cluster directory can be brought up again"
