#!/usr/bin/env bash
# `mesh batches`: the stored batches newest first, in text and --json, with their states (one
# removed by --keep-finished, failed, cancelled, running, a map-reduce job's two stages), the
# counts stored with each batch's end (equal to its result rows), filters (--state, --label,
# --mine, --failed), paging with --before and the hint on stderr, usage errors (exit 2), hostile listings
# (badRequest each, counted), and the same listing after a nexus restart.
. "$(dirname "$0")/lib.sh"
up --spores 2 --nexus-args "--keep-finished 2s"
spores_back() { mesh status --json | grep -q '"nodes_alive":2'; }

expect_rc 0 mesh batches
[ "$(wc -l < "$T/out")" -eq 1 ] || fail "an empty nexus listed batches: $(cat "$T/out")"
grep -qx "mesh: no batch has been submitted yet" "$T/err" || fail "empty listing: $(cat "$T/err")"

# A batch removed by retention, then a nexus that keeps everything from then on.
gone=$(printf 'a\nb\n' | mesh submit --handler echo --lines - --wait)
removed() { [ "$(sql "SELECT purging = 0 AND expired_ms IS NOT NULL FROM batches WHERE id = $1")" = 1 ]; }
wait_until 30 "batch $gone to expire" removed "$gone"
echo "" > "$T/c/nexus-args"
"$cluster" stop "$T/c" nexus
"$cluster" restart-nexus "$T/c"
wait_until 60 "the spores to reconnect" spores_back

nightly=$(seq 1 5 | mesh submit --handler echo --lines - --label nightly --wait)
set +e
bad=$(printf 'x\ny\n' | mesh submit --handler fail --attempts 1 --lines - --label nightly-2 --wait 2> /dev/null)
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "the failing batch's submit --wait exited $rc"
cancelled=$(printf '60000\n60000\n' | mesh submit --handler sleep --lines -)
expect_rc 0 mesh cancel "$cancelled"
expect_rc 1 timeout 30 mesh wait "$cancelled"
printf 'one two\ntwo\n' > "$T/in"
expect_rc 0 timeout 60 mesh mapreduce --mapper echo --reducer echo --reducers 2 --output "$T/mr" "$T/in"
map=$(sql "SELECT id FROM batches WHERE mr_stage = 1")
reduce=$(sql "SELECT next_batch FROM batches WHERE id = $map")
# Another client's batch, for --mine.
mesh keys gen "$T/other.key" > /dev/null
mesh keys accept "$T/other.key.pub" --role client > /dev/null
theirs=$(echo x | MESH_KEY=$T/other.key mesh submit --handler echo --lines - --label theirs --wait)
running=$(printf '60000\n' | mesh submit --handler sleep --lines - --label 'long one')
all="$running $theirs $reduce $map $cancelled $bad $nightly $gone"
[ "$(sql "SELECT group_concat(id, ' ') FROM (SELECT id FROM batches ORDER BY id DESC)")" = "$all" ] ||
  fail "the store has batches $(sql "SELECT group_concat(id, ' ') FROM batches"), expected $all"

# The counts stored with each end are those of its result rows.
for b in $nightly $bad $cancelled $map $reduce $theirs; do
  kept=$(sql "SELECT kept_succeeded || ',' || kept_failed || ',' || kept_cancelled FROM batches WHERE id = $b")
  rows=$(sql "SELECT COALESCE(SUM(r.status = 0), 0) || ',' || COALESCE(SUM(r.status NOT IN (0, 5)), 0) || ',' ||
              COALESCE(SUM(r.status = 5), 0) FROM tasks t JOIN results r ON r.task = t.id WHERE t.batch = $b")
  [ "$kept" = "$rows" ] || fail "batch $b: stored counts $kept, result rows $rows"
done

note "text"
expect_rc 0 mesh batches
head -1 "$T/out" | grep -Eq '^BATCH +LABEL +HANDLER +PRIO +SUBMITTED +TOTAL +OK +FAILED +STATE +TOOK$' ||
  fail "header: $(head -1 "$T/out")"
[ "$(tail -n +2 "$T/out" | awk '{ printf "%s%s", sep, $1; sep = " " }')" = "$all" ] || fail "order: $(cat "$T/out")"
[ ! -s "$T/err" ] || fail "a whole listing printed on stderr: $(cat "$T/err")"
when='[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}'
row() { grep -E "^$1 " "$T/out" || fail "no row for batch $1: $(cat "$T/out")"; }
row "$nightly" | grep -Eq "^$nightly +nightly +echo +0 $when +5 +5 +0  finished +[0-9.]+(ms|s)$" || fail "row: $(row "$nightly")"
row "$bad" | grep -Eq "^$bad +nightly-2 +fail +0 $when +2 +0 +2  finished +[0-9.]+(ms|s)$" || fail "row: $(row "$bad")"
row "$cancelled" | grep -Eq "^$cancelled +- +sleep .* +2 +0 +0  cancelled +[0-9.]+(ms|s)$" || fail "row: $(row "$cancelled")"
row "$running" | grep -Eq "^$running +long one +sleep .* +1 +0 +0  running +-$" || fail "row: $(row "$running")"
row "$gone" | grep -Eq "^$gone +- +echo .* +2 +2 +0  expired +[0-9.]+(ms|s)$" || fail "row: $(row "$gone")"
row "$map" | grep -Eq "^$map +mapreduce +echo:map " || fail "row: $(row "$map")"
row "$reduce" | grep -Eq "^$reduce +mapreduce \(reduce\) +echo:reduce .* +2 +2 +0  finished" || fail "row: $(row "$reduce")"

note "json"
expect_rc 0 mesh batches --json
[ ! -s "$T/err" ] || fail "--json printed on stderr: $(cat "$T/err")"
python3 - "$T/out" "$all" "$nightly" "$running" "$gone" "$map" "$reduce" "$theirs" <<'PY' || fail "--json: $(cat "$T/out")"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
want = [int(x) for x in sys.argv[2].split()]
nightly, running, gone, map_, reduce_, theirs = (int(x) for x in sys.argv[3:9])
assert [r["batch"] for r in rows] == want, [r["batch"] for r in rows]
keys = ["batch", "label", "handler", "stage", "priority", "owner", "submitted_ms", "finished_ms", "duration_ms", "total",
        "succeeded", "failed", "cancelled", "queued", "running", "state", "expired_ms", "retry_of", "next_batch"]
by = {}
for r in rows:
    assert list(r) == keys, list(r)
    by[r["batch"]] = r
n = by[nightly]
assert (n["label"], n["total"], n["succeeded"], n["failed"], n["state"], n["stage"]) == ("nightly", 5, 5, 0, "finished", None), n
assert n["finished_ms"] >= n["submitted_ms"] > 1e12 and n["duration_ms"] == n["finished_ms"] - n["submitted_ms"], n
r = by[running]
assert (r["state"], r["finished_ms"], r["duration_ms"], r["label"]) == ("running", None, None, "long one"), r
assert r["running"] + r["queued"] == 1, r
g = by[gone]
assert (g["state"], g["succeeded"], g["total"]) == ("expired", 2, 2) and g["expired_ms"] >= g["finished_ms"], g
assert (by[map_]["stage"], by[map_]["next_batch"], by[reduce_]["stage"]) == ("map", reduce_, "reduce"), (by[map_], by[reduce_])
assert by[theirs]["owner"] != by[nightly]["owner"] and len(by[nightly]["owner"]) == 19, (by[theirs], by[nightly])
PY

note "filters"
ids() { expect_rc 0 mesh batches --json "$@"; grep -o '^{"batch":[0-9]*' "$T/out" | cut -d: -f2 | tr '\n' ' ' | sed 's/ $//'; }
[ "$(ids --state finished)" = "$theirs $reduce $map $bad $nightly" ] || fail "--state finished: $(ids --state finished)"
[ "$(ids --state cancelled)" = "$cancelled" ] || fail "--state cancelled: $(ids --state cancelled)"
[ "$(ids --state expired)" = "$gone" ] || fail "--state expired: $(ids --state expired)"
[ "$(ids --state running)" = "$running" ] || fail "--state running: $(ids --state running)"
[ "$(ids --state open)" = "" ] || fail "--state open: $(ids --state open)"
[ "$(ids --state all)" = "$all" ] || fail "--state all: $(ids --state all)"
[ "$(ids --label nightly)" = "$nightly" ] || fail "--label nightly (exact): $(ids --label nightly)"
[ "$(ids --label 'long one')" = "$running" ] || fail "--label 'long one': $(ids --label 'long one')"
[ "$(ids --label '')" = "$cancelled $gone" ] || fail "--label '': $(ids --label '')"
[ "$(ids --label nightly --state running)" = "" ] || fail "--label nightly --state running"
[ "$(ids --failed)" = "$bad" ] || fail "--failed (finished with a failed task): $(ids --failed)"
[ "$(ids --failed --label nightly)" = "" ] || fail "--failed --label nightly: $(ids --failed --label nightly)"
[ "$(MESH_KEY=$T/other.key ids --mine)" = "$theirs" ] || fail "--mine (other key): $(MESH_KEY=$T/other.key ids --mine)"
[ "$(ids --mine --state finished)" = "$reduce $map $bad $nightly" ] || fail "--mine: $(ids --mine --state finished)"
expect_rc 0 mesh batches --label nothing-has-this
[ "$(wc -l < "$T/out")" -eq 1 ] && grep -qx "mesh: no batch matches" "$T/err" || fail "no match: $(cat "$T/out" "$T/err")"

note "paging"
expect_rc 0 mesh batches --limit 3
[ "$(tail -n +2 "$T/out" | awk '{ print $1 }' | tr '\n' ' ')" = "$running $theirs $reduce " ] || fail "first page: $(cat "$T/out")"
grep -qx "mesh: more batches: mesh batches --before $reduce --limit 3" "$T/err" || fail "first page hint: $(cat "$T/err")"
seen=""
next="mesh batches --limit 3"
for _ in 1 2 3 4 5; do
  # shellcheck disable=SC2086
  expect_rc 0 $next
  seen="$seen $(tail -n +2 "$T/out" | awk '{ print $1 }' | tr '\n' ' ')"
  [ -s "$T/err" ] || break
  next=$(sed -n 's/^mesh: more batches: //p' "$T/err")
  [ -n "$next" ] || fail "paging: $(cat "$T/err")"
done
[ "$(echo $seen)" = "$all" ] || fail "pages gave $(echo $seen), expected $all"
expect_rc 0 mesh batches --before "$bad" --state finished --limit 1
[ "$(tail -n +2 "$T/out" | awk '{ print $1 }')" = "$nightly" ] && [ ! -s "$T/err" ] || fail "--before: $(cat "$T/out" "$T/err")"
expect_rc 0 mesh batches --before "$map" --label nightly-2 --limit 1
grep -q "^$bad " "$T/out" && [ ! -s "$T/err" ] || fail "--before --label: $(cat "$T/out" "$T/err")"
expect_rc 0 mesh batches --json --limit 2
[ "$(wc -l < "$T/out")" -eq 2 ] && [ ! -s "$T/err" ] || fail "--json --limit 2: $(cat "$T/out" "$T/err")"

note "usage errors"
expect_rc 2 mesh batches --state failed
grep -q "unknown --state 'failed': use waiting, open, running, cancelling, finished, cancelled, expired or all" "$T/err" || fail "$(cat "$T/err")"
expect_rc 2 mesh batches --limit 0
expect_rc 2 mesh batches --limit 1001
grep -q -- "--limit for batches must be 1-1000" "$T/err" || fail "$(cat "$T/err")"
expect_rc 2 mesh batches --before 0
expect_rc 2 mesh batches "$nightly"
expect_rc 2 mesh batches --label "$(head -c 300 /dev/zero | tr '\0' L)"
[ ! -s "$T/out" ] || fail "a usage error printed $(cat "$T/out")"

note "hostile listings"
refused=$(counter batches_requests_refused)
expect_rc 0 "$MESH_BUILD/tests/integration/hostile_client" "$MESH_NEXUS" "$MESH_NEXUS_KEY" "$MESH_KEY" batches 0 0
[ "$(grep -c '^batches [0-5]: error 0 ' "$T/out")" -eq 6 ] || fail "hostile listings: $(cat "$T/out")"
[ "$(counter batches_requests_refused)" -eq $((refused + 6)) ] || fail "batches_requests_refused is $(counter batches_requests_refused)"

note "after a restart"
expect_rc 0 mesh batches --json
grep -v "\"batch\":$running," "$T/out" > "$T/before.json"
"$cluster" stop "$T/c" nexus
"$cluster" restart-nexus "$T/c"
expect_rc 0 mesh batches --json
grep -v "\"batch\":$running," "$T/out" > "$T/after.json"
diff "$T/before.json" "$T/after.json" > /dev/null || fail "the listing changed at the restart: $(diff "$T/before.json" "$T/after.json")"
grep -q "{\"batch\":$running,.*\"state\":\"running\"" "$T/out" || fail "the running batch after the restart: $(cat "$T/out")"
[ "$(ids)" = "$all" ] || fail "after the restart: $(ids)"

note "mesh status keeps its table straight with a long label"
wait_until 60 "the spores to reconnect" spores_back
long=$(echo x | mesh submit --handler echo --lines - --label "a label much longer than its column is wide" --wait)
expect_rc 0 mesh status
at=$(grep -m1 '^BATCH ' "$T/out" | awk '{ print index($0, "STATE") }')
row=$(grep "^$long " "$T/out") || fail "batch $long is not in mesh status: $(cat "$T/out")"
[ "$(awk '{ print index($0, "finished") }' <<< "$row")" -eq "$at" ] || fail "the long label pushed the row out of its columns: $(cat "$T/out")"
note "ok: $all"
