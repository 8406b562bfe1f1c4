#!/usr/bin/env bash
# Map-reduce from the shell (the Hadoop Streaming contract) on a running Hive Mesh:
#
#   scripts/mapreduce.sh -m MAPPER -r REDUCER [-c COMBINER] [-R REDUCERS] [-s CHUNK] [-a ID] [-d ID] -o OUTDIR INPUT...
#
# MAPPER, COMBINER and REDUCER are handler names the spores offer (programs in their
# --handlers DIR, e.g. examples/wordcount). Writes OUTDIR/part-00000... and OUTDIR/merged.
# -a ID / -d ID (repeatable): start only after batch or job ID finished with every task
# succeeded / finished at all (mesh submit --after / --after-done). Uses MESH_NEXUS,
# MESH_NEXUS_KEY and MESH_KEY (for a local cluster: . DIR/env).
set -euo pipefail
# usage [STATUS]: the comment above; on stdout for -h/--help (exit 0), else on stderr (exit 2).
usage() {
  if [ "${1:-2}" -eq 0 ]; then sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
[ "${1:-}" != "--help" ] || usage 0
mapper= reducer= combiner= reducers=4 chunk=1M out=
waits=()
while getopts "m:r:c:R:s:o:a:d:h" opt; do
  case $opt in
    m) mapper=$OPTARG ;;
    r) reducer=$OPTARG ;;
    c) combiner=$OPTARG ;;
    R) reducers=$OPTARG ;;
    s) chunk=$OPTARG ;;
    o) out=$OPTARG ;;
    a) waits+=(--after "$OPTARG") ;;
    d) waits+=(--after-done "$OPTARG") ;;
    h) usage 0 ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ -n "$mapper" ] && [ -n "$reducer" ] && [ -n "$out" ] && [ $# -ge 1 ] || usage
command -v mesh >/dev/null || { echo "mapreduce.sh: 'mesh' is not on PATH (for a local cluster: . DIR/env)" >&2; exit 2; }
args=(--mapper "$mapper" --reducer "$reducer" --reducers "$reducers" --chunk-size "$chunk" --output "$out" --merge)
[ -z "$combiner" ] || args+=(--combiner "$combiner")
args+=("${waits[@]}")
exec mesh mapreduce "${args[@]}" "$@"
