#!/usr/bin/env bash
# A local Hive Mesh cluster on 127.0.0.1, for development, tests and the demo.
#
#   scripts/cluster.sh up [--spores N] [--slots S] [--nexus-args "..."] [--spore-args "..."]
#                         [--trust FILE]... DIR
#       starts a nexus and N spores (default 2) on ports chosen at run time, each in its own
#       sub-directory of DIR, with generated and accepted keys; writes DIR/env (source it to
#       use `mesh`) and DIR/pids; returns when every spore has joined. --trust passes a release
#       public key (signed bundles) to the nexus and every spore, including later ones.
#       A DIR brought down before is used again: its keys, database and ports.
#   scripts/cluster.sh add-spore DIR NAME [spore options...]
#       starts one more spore (its key generated and accepted) and waits until it joins.
#   scripts/cluster.sh stop DIR NAME     stops one process of the cluster (SIGTERM: a spore finishes
#                                        its running tasks; again after 5 s; SIGKILL after 15 s)
#   scripts/cluster.sh kill DIR NAME     SIGKILLs one process of the cluster
#   scripts/cluster.sh restart-nexus DIR starts the nexus again on the same data dir and ports
#   scripts/cluster.sh down DIR          stops exactly the processes recorded in DIR/pids
#
# Binaries come from $MESH_BUILD/nodes (default: the repository's build directory).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${MESH_BUILD:-$repo/build}/nodes

die() { echo "cluster: $*" >&2; exit 2; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds or the deadline passes.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster: timed out after ${seconds}s waiting for $what" >&2
      return 1
    fi
    sleep 0.1
  done
}

record_pid() { echo "$2 $3" >> "$1/pids"; }

pid_of() { awk -v n="$2" '$1 == n { p = $2 } END { if (p) print p }' "$1/pids"; }

# True when PID is still the process this cluster started (not a recycled PID).
ours() {
  local dir=$1 pid=$2
  local cmdline
  cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$dir"* ]]
}

# stop_pid DIR PID [SIGNAL [PATIENCE]]: SIGTERM lets a spore finish its running tasks (it hands
# its queued ones back at once); after PATIENCE seconds (default 5) a second SIGTERM stops it at
# once, and SIGKILL follows 10 s later.
stop_pid() {
  local dir=$1 pid=$2 signal=${3:-TERM} patience=${4:-5}
  ours "$dir" "$pid" || return 0
  kill "-$signal" "$pid" 2>/dev/null || return 0
  local deadline=$((SECONDS + patience))
  while ours "$dir" "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
  if [ "$signal" = TERM ] && ours "$dir" "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
  deadline=$((SECONDS + 10))
  while ours "$dir" "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
  if ours "$dir" "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  while ours "$dir" "$pid" && [ $SECONDS -lt $((deadline + 5)) ]; do sleep 0.05; done
}

spores_alive() {
  local dir=$1 want=$2
  # shellcheck disable=SC1091
  local n
  n=$(. "$dir/env" && "$bin/mesh" nodes --json --timeout 2s | grep -c '"name"' || true)
  [ "$n" -ge "$want" ]
}

spore_joined() {
  local dir=$1 name=$2
  local nodes
  nodes=$(. "$dir/env" && "$bin/mesh" nodes --json --timeout 2s) || return 1
  [[ $nodes == *"\"name\":\"$name\""* ]]
}

start_nexus() {
  local dir=$1
  shift
  local bind_node=tcp://127.0.0.1:* bind_client=tcp://127.0.0.1:* bind_events=tcp://127.0.0.1:*
  if [ -f "$dir/nexus/endpoints" ]; then  # a restart keeps its ports
    bind_node=$(awk '$1 == "node" { print $2 }' "$dir/nexus/endpoints")
    bind_client=$(awk '$1 == "client" { print $2 }' "$dir/nexus/endpoints")
    bind_events=$(awk '$1 == "events" { print $2 }' "$dir/nexus/endpoints")
    rm -f "$dir/nexus/endpoints"
  fi
  # shellcheck disable=SC2086
  "$bin/nexus" --data-dir "$dir/nexus" --bind-node "$bind_node" --bind-client "$bind_client" \
    --bind-events "$bind_events" --name local-nexus $(cat "$dir/nexus-args" 2>/dev/null) \
    $(cat "$dir/trust-args" 2>/dev/null) "$@" \
    >> "$dir/nexus.log" 2>&1 &
  record_pid "$dir" nexus $!
  if ! wait_for 15 "the nexus to start (see $dir/nexus.log)" test -f "$dir/nexus/endpoints"; then
    tail -5 "$dir/nexus.log" >&2
    return 1
  fi
}

start_spore() {
  local dir=$1 name=$2
  shift 2
  local sdir=$dir/$name
  [ -e "$sdir" ] || mkdir -p "$sdir"
  if [ ! -f "$sdir/spore.key" ]; then
    "$bin/mesh" keys gen "$sdir/spore.key" >/dev/null
    "$bin/mesh" keys accept "$sdir/spore.key.pub" --role node --comment "$name" --data-dir "$dir/nexus" >/dev/null
  fi
  local node
  node=$(awk '$1 == "node" { print $2 }' "$dir/nexus/endpoints")
  # shellcheck disable=SC2046
  "$bin/spore" --data-dir "$sdir" --nexus "$node" --nexus-key "$dir/nexus/nexus.key.pub" --name "$name" \
    $(cat "$dir/spore-args" 2>/dev/null) $(cat "$dir/trust-args" 2>/dev/null) "$@" >> "$dir/$name.log" 2>&1 &
  record_pid "$dir" "$name" $!
}

cmd_up() {
  local spores=2 slots=2 dir="" trust_args=""
  while [ $# -gt 0 ]; do
    case $1 in
      --spores) spores=$2; shift 2 ;;
      --slots) slots=$2; shift 2 ;;
      --nexus-args) nexus_args=$2; shift 2 ;;
      --spore-args) spore_args=$2; shift 2 ;;
      --trust) [ -r "$2" ] || die "--trust: cannot read $2"
               trust_args="$trust_args --trust $(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
      -*) die "unknown option $1" ;;
      *) [ -z "$dir" ] || die "one DIR only"; dir=$1; shift ;;
    esac
  done
  [ -n "$dir" ] || die "usage: cluster.sh up [--spores N] [--slots S] DIR"
  [[ $spores =~ ^[0-9]+$ ]] || die "--spores takes a number"
  [ -x "$bin/nexus" ] || die "no binaries in $bin: run scripts/build.sh first"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ ! -s "$dir/pids" ] || die "$dir already holds a cluster: run 'cluster.sh down $dir' first"
  : > "$dir/pids"
  echo "${nexus_args:-}" > "$dir/nexus-args"
  echo "$slots" > "$dir/slots"
  echo "${spore_args:-}" > "$dir/spore-args"
  echo "$trust_args" > "$dir/trust-args"
  start_nexus "$dir"
  # DIR may hold a cluster that was brought down: its keys, database and ports are used again.
  if ! { [ -f "$dir/operator.key" ] || "$bin/mesh" keys gen "$dir/operator.key" >/dev/null; } ||
     ! "$bin/mesh" keys accept "$dir/operator.key.pub" --role admin --comment operator --data-dir "$dir/nexus" >/dev/null; then
    cmd_down "$dir"  # nothing left running
    die "could not make the operator key in $dir"
  fi
  cat > "$dir/env" <<ENV
export PATH="$bin:\$PATH"
export MESH_NEXUS=$(awk '$1 == "client" { print $2 }' "$dir/nexus/endpoints")
export MESH_NEXUS_KEY="$dir/nexus/nexus.key.pub"
export MESH_KEY="$dir/operator.key"
export MESH_DATA_DIR="$dir/nexus"
ENV
  local i
  for i in $(seq 1 "$spores"); do start_spore "$dir" "spore-$i" --slots "$slots"; done
  if ! wait_for 30 "$spores spores to join" spores_alive "$dir" "$spores"; then
    cmd_down "$dir"
    return 1
  fi
  echo "cluster up in $dir: nexus and $spores spore$([ "$spores" -eq 1 ] || echo s); run: . $dir/env"
}

cmd_add_spore() {
  [ $# -ge 2 ] || die "usage: cluster.sh add-spore DIR NAME [spore options...]"
  local dir
  dir=$(cd "$1" && pwd)
  local name=$2
  shift 2
  local args=("$@") a has_slots=""
  # A loop, not `printf | grep -q`: with pipefail, grep quitting at its match can fail the
  # printf with SIGPIPE, and --slots was then given twice (chaos.sh saw it under load).
  for a in "${args[@]}"; do case $a in --slots|--slots=*) has_slots=1 ;; esac; done
  [ -n "$has_slots" ] || args+=(--slots "$(cat "$dir/slots")")
  start_spore "$dir" "$name" "${args[@]}"
  wait_for 30 "spore $name to join" spore_joined "$dir" "$name"
}

cmd_stop() {
  local dir
  dir=$(cd "$1" && pwd)
  local pid
  pid=$(pid_of "$dir" "$2")
  [ -n "$pid" ] || die "no process named $2 in $dir/pids"
  stop_pid "$dir" "$pid" "${3:-TERM}"
}

cmd_restart_nexus() {
  local dir
  dir=$(cd "$1" && pwd)
  local pid
  pid=$(pid_of "$dir" nexus)
  if [ -n "$pid" ] && ours "$dir" "$pid"; then die "the nexus is still running (pid $pid)"; fi
  start_nexus "$dir"
}

cmd_down() {
  [ $# -eq 1 ] || die "usage: cluster.sh down DIR"
  local dir
  dir=$(cd "$1" 2>/dev/null && pwd) || die "no such directory $1"
  [ -f "$dir/pids" ] || return 0
  local name pid
  # Spores first, so that the nexus does not log them as lost; each gets 1 s to finish.
  while read -r name pid; do
    [ "$name" = nexus ] || stop_pid "$dir" "$pid" TERM 1
  done < "$dir/pids"
  while read -r name pid; do
    [ "$name" != nexus ] || stop_pid "$dir" "$pid"
  done < "$dir/pids"
  : > "$dir/pids"
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  add-spore) shift; cmd_add_spore "$@" ;;
  stop) shift; cmd_stop "$1" "$2" TERM ;;
  kill) shift; cmd_stop "$1" "$2" KILL ;;
  restart-nexus) shift; cmd_restart_nexus "$@" ;;
  down) shift; cmd_down "$@" ;;
  *) die "usage: cluster.sh up|add-spore|stop|kill|restart-nexus|down ... (see the top of this script)" ;;
esac
