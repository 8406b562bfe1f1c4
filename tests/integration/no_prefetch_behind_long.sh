#!/usr/bin/env bash
# No task is prefetched behind long tasks that hold every slot of a spore (the Celery prefetch
# complaint). Two spores of 2 slots; two `sleep 60000` tasks hold both slots of spore-long
# (--requires long, a tag only it has); then 5,000 echo tasks. They are microsecond tasks, so
# their prefetch is large, but spore-long's slots will not free soon: every echo task runs on
# spore-1, and the batch ends within 30 s while the sleeps still run. (Before the fix, up to
# 256 of them were sent to spore-long and waited there for the sleeps: the batch did not end.)
# The sleeps are cancelled at the end.
. "$(dirname "$0")/lib.sh"
up --spores 1 --slots 2
"$cluster" add-spore "$T/c" spore-long --tags long > /dev/null
field() { mesh status --json | grep -o "{\"batch\":$1,[^}]*}" | grep -o "\"$2\":[0-9]*" | cut -d: -f2; }
sleep_batch=$(printf '60000\n60000\n' | mesh submit --handler sleep --requires long --lines -)
both_running() { [ "$(field "$sleep_batch" running)" -eq 2 ]; }
wait_until 30 "both sleeps to run on spore-long" both_running
echo_batch=$(seq 1 5000 | mesh submit --handler echo --lines -)
wait_until 30 "all 5,000 echo tasks to finish while the sleeps hold spore-long" at_least_done "$echo_batch" 5000
store_check "$echo_batch" 5000
on_long=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $echo_batch AND r.node <> 'spore-1'")
[ "$on_long" -eq 0 ] || fail "$on_long echo tasks ran elsewhere than on spore-1"
ended=$(sql "SELECT COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = $sleep_batch")
[ "$ended" -eq 0 ] || fail "$ended of the sleeps ended before the echo batch did: the test proves nothing"
both_running || fail "the sleeps no longer run on spore-long"
expect_rc 0 mesh cancel "$sleep_batch"
expect_rc 1 timeout 30 mesh wait "$sleep_batch"
note "5,000 echo tasks ran on spore-1 while two 60 s sleeps held both slots of spore-long; none waited behind them"
