#!/usr/bin/env bash
# A spore that reports bundle names by the thousand: the nexus keeps at most its own bundles
# plus 16 names per spore, counts the rest, and `mesh bundles` stays small.
. "$(dirname "$0")/lib.sh"
up --spores 1
node=$(awk '$1 == "node" { print $2 }' "$T/c/nexus/endpoints")
mesh keys gen "$T/junk.key" > /dev/null
mesh keys accept "$T/junk.key.pub" --role node > /dev/null
timeout 60 "$MESH_BUILD/tests/integration/hostile_client" "$node" "$MESH_NEXUS_KEY" "$T/junk.key" \
  bundles:junk:2000 0 5 > "$T/junk.out" &
extra_pids+=($!)
over() { [ "$(counter bundle_reports_over_limit)" -ge $((2000 - 16)) ]; }
wait_until 20 "the reports over the limit to be counted" over
expect_rc 0 mesh bundles --json
listed=$(grep -o '"junk-[0-9]*"' "$T/out" | sort -u | wc -l)
[ "$listed" -eq 16 ] || fail "the nexus kept $listed junk bundle names, expected 16"
grep -q 'dropped a report of bundle junk-16 from spore junk' "$T/c/nexus.log" || fail "the excess was not logged"
note "bundle_reports_over_limit=$(counter bundle_reports_over_limit)"
