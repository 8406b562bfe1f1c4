#!/usr/bin/env bash
# Hive Mesh benchmarks, and (with --peers) the peers' figures from the same run, in one table.
#
#   bench/run.sh [options] [WORKLOAD...]       workloads: A B C D E F (default: all of them)
#
#   --json                one JSON object per line on stdout (workload, system, value, unit, p99
#                         where it applies) instead of the table; progress goes to stderr
#   --reps N              repetitions of each mesh workload (default 3; each workload runs on a
#                         fresh local cluster, the repetitions on the same one)
#   --peers               also run the peer scripts of ../shared/bench/peers (Debian's python3;
#                         installs their Debian packages with apt-get when missing)
#   --peer-list LIST      which peers (default dask,celery,ipp,rawzmq; also ipp-pure, rq, local
#                         for multiprocessing.Pool(2)); --peer-list all for every one
#   --peer-workloads LIST workloads of the peers (default: the mesh workloads among A,B,C,D)
#   --peer-reps N         repetitions of each peer workload (default 1: the peers take ~50 min
#                         for 3 repetitions of everything)
#   --idle-s N            F: seconds over which the nexus's idle CPU is measured (default 20)
#   --quiet-max S         before each measurement wait up to S seconds for a quiet machine
#                         (default 30; the peers' harness uses 90)
#   --d-handlers DIR      D: the handler directory the spores get (default: the compiled
#                         word-count serve handlers the build makes, build/examples/wordcount/serve;
#                         build/examples/wordcount/native has the one-process-per-task ones)
#
# Every run writes its raw data under bench/results/run-STAMP/ (git-ignored): mesh.jsonl,
# peers.jsonl, the clusters' logs. Nothing is written to shared/: the peer scripts run from a
# folder of symbolic links to them (their own logs and the raw-ZeroMQ binary go there).
# D counts the words of the peers' 50 MB corpus (build/examples/make-corpus; kept in
# bench/results/corpus-50MB.txt between runs) with `mesh mapreduce`, checked against a count
# made by mesh_bench itself.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
peers_src=$(dirname "$repo")/shared/bench/peers
build=$repo/build
py=/usr/bin/python3

json=0 peers=0 reps=3 peer_reps=1 peer_list=dask,celery,ipp,rawzmq peer_workloads="" idle_s=20 quiet_max=30
d_handlers=$build/examples/wordcount/serve
workloads=()
die() { echo "bench: $*" >&2; exit 2; }
say() { echo "bench: $*" >&2; }

while [ $# -gt 0 ]; do
  case $1 in
    --json) json=1; shift ;;
    --peers) peers=1; shift ;;
    --reps) reps=$2; shift 2 ;;
    --peer-list) peer_list=$2; shift 2 ;;
    --peer-workloads) peer_workloads=$2; shift 2 ;;
    --peer-reps) peer_reps=$2; shift 2 ;;
    --idle-s) idle_s=$2; shift 2 ;;
    --quiet-max) quiet_max=$2; shift 2 ;;
    --d-handlers) d_handlers=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    A|B|C|D|E|F) workloads+=("$1"); shift ;;
    *) die "unknown argument $1 (see bench/run.sh --help)" ;;
  esac
done
[ ${#workloads[@]} -gt 0 ] || workloads=(A B C D E F)
for n in "$reps" "$peer_reps" "$idle_s"; do [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 100 ] || die "--reps, --peer-reps and --idle-s take 1..100"; done
[[ $quiet_max =~ ^[0-9]+$ ]] || die "--quiet-max takes whole seconds"
case " ${workloads[*]} " in
  *" D "*) [ -d "$d_handlers" ] || [ "$d_handlers" = "$build/examples/wordcount/serve" ] ||
             die "--d-handlers: no directory $d_handlers" ;;
esac
[ "$peer_list" != all ] || peer_list=dask,celery,ipp,ipp-pure,rq,local,rawzmq
if [ -z "$peer_workloads" ]; then
  for w in "${workloads[@]}"; do case $w in A|B|C|D) peer_workloads+="${peer_workloads:+,}$w" ;; esac; done
  [ -n "$peer_workloads" ] || peer_workloads=A,C
fi

stamp=$(date +%Y%m%d-%H%M%S)
out=$repo/bench/results/run-$stamp
mkdir -p "$out"
mesh_jsonl=$out/mesh.jsonl peers_jsonl=$out/peers.jsonl
: > "$mesh_jsonl"

# ---- cleanup: every process this script starts is stopped by PID -------------------------------
cluster=""   # the cluster dir while one is up
child=""     # the PID of the benchmark process running now
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$child" 2>/dev/null || true
  fi
  if [ -n "$cluster" ] && [ -d "$cluster" ]; then "$repo/scripts/cluster.sh" down "$cluster" || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_child LOG_STDOUT COMMAND...: runs COMMAND in the background (so that its PID is known to
# cleanup), appends its stdout to LOG_STDOUT and waits for it.
run_child() {
  local stdout=$1
  shift
  "$@" >> "$stdout" &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  child=""
  return "$rc"
}

# ---- build --------------------------------------------------------------------------------------
say "building (scripts/build.sh; log in $out/build.log)"
if ! "$repo/scripts/build.sh" > "$out/build.log" 2>&1; then
  tail -20 "$out/build.log" >&2
  die "the build failed (see $out/build.log)"
fi
bench_bin=$build/bench/mesh_bench
[ -x "$bench_bin" ] || die "no $bench_bin after the build"

# F opens ~1,000 connections on each side.
[ "$(ulimit -n)" -ge 8192 ] || ulimit -n 8192 2>/dev/null || say "could not raise the open-files limit to 8192; F may fail"

# ---- the mesh -----------------------------------------------------------------------------------
for w in "${workloads[@]}"; do
  cluster=$out/cluster-$w
  spores=2
  [ "$w" != F ] || spores=0   # F brings its own 1,000 simulated spores
  say "workload $w: starting a local cluster ($spores spores, 2 slots each) in $cluster"
  up=(--spores "$spores" --slots 2)
  args=("$w" --pids "$cluster/pids" --reps "$reps" --quiet-max "$quiet_max")
  [ "$w" != F ] || args+=(--data-dir "$cluster/nexus" --idle-s "$idle_s")
  if [ "$w" = D ]; then
    corpus=$repo/bench/results/corpus-50MB.txt
    if [ "$(stat -c %s "$corpus" 2>/dev/null || echo 0)" != 50000003 ]; then
      say "workload D: writing the 50 MB corpus to $corpus"
      "$build/examples/make-corpus" > "$corpus.tmp" && mv "$corpus.tmp" "$corpus"
    fi
    [ -d "$d_handlers" ] || die "no handler directory $d_handlers (--d-handlers; the build makes the default)"
    up+=(--spore-args "--handlers $d_handlers")
    mkdir -p "$cluster-out"
    args+=(--corpus "$corpus" --out "$cluster-out" --mesh "$build/nodes/mesh")
  fi
  "$repo/scripts/cluster.sh" up "${up[@]}" "$cluster" >&2
  say "workload $w: mesh_bench ${args[*]}"
  # shellcheck disable=SC1091
  . "$cluster/env"   # MESH_NEXUS, MESH_NEXUS_KEY, MESH_KEY of this cluster
  rc=0
  run_child "$mesh_jsonl" timeout 1800 "$bench_bin" "${args[@]}" || rc=$?
  "$repo/scripts/cluster.sh" down "$cluster"
  cluster=""
  [ "$rc" -eq 0 ] || die "workload $w failed (exit $rc); logs in $out/cluster-$w/"
done

# ---- the peers ----------------------------------------------------------------------------------
if [ "$peers" -eq 1 ]; then
  [ -d "$peers_src" ] || die "no peer scripts in $peers_src"
  need=(python3-distributed python3-celery python3-redis python3-ipyparallel python3-rq python3-zmq
        libzmq3-dev cppzmq-dev redis-server pkg-config g++)
  missing=()
  for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing the peers' Debian packages: ${missing[*]}"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >&2
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2
  fi
  # A folder of links to the peer scripts: run as `python3 -m bench_x` from there, their
  # common.HERE is this folder, so their logs (run/), data and binaries stay out of shared/.
  farm=$out/peers
  mkdir -p "$farm"
  for f in "$peers_src"/*.py "$peers_src"/*.cpp; do ln -sf "$f" "$farm/"; done
  : > "$peers_jsonl"
  for p in ${peer_list//,/ }; do
    case $p in
      dask) cmd=(bench_dask --workloads "$peer_workloads") ;;
      celery) cmd=(bench_celery --workloads "$peer_workloads") ;;
      ipp) cmd=(bench_ipp --workloads "$peer_workloads") ;;
      ipp-pure) cmd=(bench_ipp --scheme pure --nodb --workloads "$peer_workloads") ;;
      rq) cmd=(bench_rq --worker-class rq.worker.SimpleWorker --workloads "$peer_workloads") ;;
      local) cmd=(bench_local --mode mp-pool --workloads "$peer_workloads") ;;
      rawzmq)
        say "building the raw ZeroMQ client/server (g++ -O2)"
        # shellcheck disable=SC2046
        g++ -O2 -std=c++17 -o "$farm/zmq_rr" "$peers_src/zmq_rr.cpp" $(pkg-config --cflags --libs libzmq)
        cmd=(bench_rawzmq --impl cpp) ;;
      *) die "unknown peer $p (dask, celery, ipp, ipp-pure, rq, local, rawzmq)" ;;
    esac
    say "peer $p: python3 -m ${cmd[*]} --reps $peer_reps"
    rc=0
    # The drivers print each measurement on stdout too; the file is what counts.
    run_child /dev/stderr env -C "$farm" BENCH_RESULTS="$peers_jsonl" \
      timeout 3600 "$py" -m "${cmd[@]}" --reps "$peer_reps" || rc=$?
    [ "$rc" -eq 0 ] || say "peer $p failed (exit $rc); its log is in $farm/run/"
  done
fi

# ---- the table or the JSON lines ----------------------------------------------------------------
report=(python3 "$repo/bench/report.py" --mesh "$mesh_jsonl")
[ "$peers" -eq 0 ] || report+=(--peers "$peers_jsonl")
if [ "$json" -eq 1 ]; then
  "${report[@]}" --json
else
  "${report[@]}"
  echo
  echo "raw data: $out"
fi
