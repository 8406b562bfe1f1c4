#!/usr/bin/env bash
# A task requiring `gpu` runs only on the spore tagged gpu; one requiring a tag nobody has stays
# pending and `mesh task` says why.
. "$(dirname "$0")/lib.sh"
up --spores 2
"$cluster" add-spore "$T/c" gpu-box --tags gpu
batch=$(seq 1 200 | mesh submit --handler echo --requires gpu --lines -)
expect_rc 0 timeout 60 mesh wait "$batch"
mesh results "$batch" --json > "$T/r"
[ "$(grep -c '"node":"gpu-box"' "$T/r")" -eq 200 ] || fail "a gpu task ran elsewhere: $(grep -v gpu-box "$T/r" | head -2)"
pending=$(echo x | mesh submit --handler echo --requires tpu --lines - --json | grep -o '[0-9]*')
first=$(mesh status --json >/dev/null; mesh task "$((1 + 200))" --json)
echo "$first" | grep -q '"state":"queued"' || fail "the tpu task is not queued: $first"
wait_until 10 "mesh task to explain the wait" sh -c "mesh task 201 | grep -q 'why: no live spore has tag(s) tpu'"
mesh status --json | grep -q "\"batch\":$pending,[^}]*\"queued\":1" || fail "status does not show the pending task"
expect_rc 0 mesh cancel "$pending"
expect_rc 1 timeout 30 mesh wait "$pending"
note "tags route tasks; an unmatched requirement is explained"
