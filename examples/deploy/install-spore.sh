#!/usr/bin/env bash
# install-spore.sh: installs (or upgrades) a Hive Mesh spore on each host of a hosts file, over ssh.
#
# On each host it: creates the system user hive-mesh; copies the spore and mesh binaries to
# /usr/local/bin and the nexus public key to /etc/hive-mesh/nexus.key.pub; writes
# /etc/hive-mesh/spore.conf and the systemd unit; generates the spore's key pair ON THE HOST
# (the secret key never leaves it; an existing key is kept); enables and (re)starts the service.
# It then saves each host's public key in --keys-dir and prints the fingerprints and the
# `mesh keys accept` commands to run on the nexus host.
#
# Run `install-spore.sh --help` for the options; --dry-run shows every command without running any.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
prog=$(basename "$0")

usage() {
  cat <<EOF
Usage: $prog --nexus-key NEXUS.pub [options] HOSTS_FILE

Installs a Hive Mesh spore on every host listed in HOSTS_FILE, over ssh, as a systemd service.

HOSTS_FILE: one host per line, then optional key=value settings for that host:
    HOST [name=NAME] [slots=N] [tags=TAG,TAG] [interface=IF] [advertise=ADDR] [port=SSH_PORT]
  HOST is an ssh destination (host, user@host, or a Host of ~/.ssh/config). '#' starts a
  comment. name defaults to HOST without its user@. See hosts.example.

Options:
  --nexus-key FILE     the nexus public key (nexus.key.pub from the nexus data dir); required
  --nexus ENDPOINT     a seed, tcp://HOST:7700 (IPv4 or name; repeatable, tried in order); none:
                       the spores find the nexus by its LAN beacon
  --cluster NAME       cluster name of the beacon (default: default)
  --append FILE        extra 'name = value' lines added to every spore.conf (limits, handlers)
  --binary FILE        spore binary to install (default: $repo/build/nodes/spore)
  --mesh-binary FILE   mesh binary to install (default: $repo/build/nodes/mesh); it makes the key
  --unit FILE          systemd unit (default: $here/hive-mesh-spore.service)
  --keys-dir DIR       where the spores' public keys are saved (default: ./spore-keys)
  --nexus-data-dir DIR the nexus data dir, for the printed commands (default: /var/lib/hive-mesh/nexus)
  --ssh-user USER      log in as USER (default: ssh's choice); not root: needs sudo without a password
  --ssh-option OPT     extra ssh/scp -o option, e.g. ProxyJump=bastion (repeatable)
  --apt                install missing runtime libraries with apt-get on the hosts (Debian 12)
  --no-start           install and enable, but do not (re)start the service
  --dry-run            check the inputs, show the commands and the config files; contact no host
  -h, --help           this help

Exit status: 0 all hosts done, 1 some host failed (the others are still done), 2 usage error.
EOF
}

die_usage() {
  echo "$prog: $*" >&2
  echo "Run '$prog --help' for the options." >&2
  exit 2
}

# ---- options -----------------------------------------------------------------------------------
nexus_key=""
seeds=()
cluster=default
append=""
binary=$repo/build/nodes/spore
mesh_binary=$repo/build/nodes/mesh
unit=$here/hive-mesh-spore.service
keys_dir=./spore-keys
nexus_data_dir=/var/lib/hive-mesh/nexus
ssh_user=""
ssh_options=(-o BatchMode=yes -o ConnectTimeout=10)
apt=0
start=1
dry_run=0
hosts_file=""

need_value() { [[ $# -ge 2 && -n ${2:-} ]] || die_usage "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --nexus-key) need_value "$@"; nexus_key=$2; shift 2 ;;
    --nexus) need_value "$@"; seeds+=("$2"); shift 2 ;;
    --cluster) need_value "$@"; cluster=$2; shift 2 ;;
    --append) need_value "$@"; append=$2; shift 2 ;;
    --binary) need_value "$@"; binary=$2; shift 2 ;;
    --mesh-binary) need_value "$@"; mesh_binary=$2; shift 2 ;;
    --unit) need_value "$@"; unit=$2; shift 2 ;;
    --keys-dir) need_value "$@"; keys_dir=$2; shift 2 ;;
    --nexus-data-dir) need_value "$@"; nexus_data_dir=$2; shift 2 ;;
    --ssh-user) need_value "$@"; ssh_user=$2; shift 2 ;;
    --ssh-option) need_value "$@"; ssh_options+=(-o "$2"); shift 2 ;;
    --apt) apt=1; shift ;;
    --no-start) start=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die_usage "unknown option $1" ;;
    *) [ -z "$hosts_file" ] || die_usage "one HOSTS_FILE only (got '$hosts_file' and '$1')"; hosts_file=$1; shift ;;
  esac
done
if [ $# -gt 0 ]; then
  [[ -z $hosts_file && $# -eq 1 ]] || die_usage "one HOSTS_FILE only"
  hosts_file=$1
fi

# ---- checks (also in --dry-run) ----------------------------------------------------------------
[ -n "$hosts_file" ] || die_usage "no HOSTS_FILE given"
[ -r "$hosts_file" ] || die_usage "cannot read the hosts file $hosts_file"
[ -n "$nexus_key" ] || die_usage "--nexus-key NEXUS.pub is required (nexus.key.pub in the nexus data dir)"
[ -r "$nexus_key" ] || die_usage "cannot read the nexus key $nexus_key"
grep -q '^public-key = ' "$nexus_key" || die_usage "$nexus_key is not a Hive Mesh public key file"
! grep -q '^secret' "$nexus_key" || die_usage "$nexus_key holds a SECRET key: give nexus.key.pub, never nexus.key"
for f in "$binary" "$mesh_binary"; do
  [[ -f $f && -x $f ]] || die_usage "no executable $f (build first: scripts/build.sh, or give --binary/--mesh-binary)"
done
[ -r "$unit" ] || die_usage "cannot read the unit file $unit"
[[ $cluster =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die_usage "--cluster: 1 to 64 characters of A-Z a-z 0-9 . _ -"
for s in ${seeds[@]+"${seeds[@]}"}; do
  # Host names and IPv4 addresses only here (an IPv6 seed works, but is not accepted by this
  # installer's check; edit spore.conf by hand for one).
  [[ $s =~ ^tcp://[A-Za-z0-9][A-Za-z0-9._-]*:[0-9]{1,5}$ ]] ||
    die_usage "--nexus '$s' is not tcp://HOST:PORT (a host name or IPv4 address)"
done
[[ $ssh_user =~ ^[A-Za-z0-9._-]*$ ]] || die_usage "--ssh-user '$ssh_user' is not a user name"
[[ $nexus_data_dir =~ ^/[A-Za-z0-9._/-]*$ ]] || die_usage "--nexus-data-dir must be an absolute path"
append_lines=""
if [ -n "$append" ]; then
  [ -r "$append" ] || die_usage "cannot read $append"
  # Only option lines and comments: nothing that could become a second [section] or shell text.
  bad=$(grep -nvE '^[[:space:]]*(#.*)?$|^[a-z][a-z0-9-]* = [^[:cntrl:]]*$' "$append" | head -1 || true)
  [ -z "$bad" ] || die_usage "--append $append: line $bad is not 'name = value'"
  if grep -qE '^(data-dir|nexus-key|name|config) =' "$append"; then
    die_usage "--append must not set data-dir, nexus-key, name or config: this script sets them"
  fi
  append_lines=$(cat "$append")
fi
nexus_fingerprint=$("$mesh_binary" keys fingerprint "$nexus_key" 2> /dev/null) ||
  die_usage "$mesh_binary cannot read $nexus_key (is it a Hive Mesh public key?)"

# hosts: parallel arrays, one entry per host line.
h_dest=() h_name=() h_conf=() h_port=()
declare -A seen_names=()
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
  lineno=$((lineno + 1))
  line=${line%%#*}
  read -r -a words <<< "$line" || true
  [ ${#words[@]} -gt 0 ] || continue
  dest=${words[0]}
  [[ $dest =~ ^([A-Za-z0-9_][A-Za-z0-9._-]*@)?[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    die_usage "$hosts_file:$lineno: '$dest' is not host or user@host"
  name=${dest#*@} slots="" tags="" iface="" advertise="" port=""
  for kv in "${words[@]:1}"; do
    k=${kv%%=*} v=${kv#*=}
    [ "$k" != "$kv" ] || die_usage "$hosts_file:$lineno: '$kv' is not key=value"
    case $k in
      name) [[ $v =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die_usage "$hosts_file:$lineno: name: 1-64 of A-Z a-z 0-9 . _ -"; name=$v ;;
      slots) [[ $v =~ ^[1-9][0-9]{0,3}$ && $v -le 1024 ]] || die_usage "$hosts_file:$lineno: slots: 1-1024"; slots=$v ;;
      tags) [[ $v =~ ^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$ ]] || die_usage "$hosts_file:$lineno: tags: comma-separated words"; tags=$v ;;
      interface) [[ $v =~ ^[A-Za-z0-9._@-]{1,15}$ ]] || die_usage "$hosts_file:$lineno: interface: an interface name"; iface=$v ;;
      advertise) [[ $v =~ ^[A-Za-z0-9._:-]{1,253}$ ]] || die_usage "$hosts_file:$lineno: advertise: a host name or address"; advertise=$v ;;
      port) [[ $v =~ ^[1-9][0-9]{0,4}$ && $v -le 65535 ]] || die_usage "$hosts_file:$lineno: port: 1-65535"; port=$v ;;
      *) die_usage "$hosts_file:$lineno: unknown setting '$k' (name, slots, tags, interface, advertise, port)" ;;
    esac
  done
  [ -z "${seen_names[$name]:-}" ] || die_usage "$hosts_file:$lineno: the name '$name' is used twice (names must be unique)"
  seen_names[$name]=1
  conf="# /etc/hive-mesh/spore.conf, written by $prog. Options of \`spore --help\`, without dashes.
data-dir = /var/lib/hive-mesh/spore
nexus-key = /etc/hive-mesh/nexus.key.pub
name = $name
cluster = $cluster"
  for s in ${seeds[@]+"${seeds[@]}"}; do conf+=$'\n'"nexus = $s"; done
  [ ${#seeds[@]} -gt 0 ] || conf+=$'\n'"# no 'nexus =' line: the spore listens for the nexus's beacon (UDP 7699)"
  [ -z "$slots" ] || conf+=$'\n'"slots = $slots"
  [ -z "$tags" ] || conf+=$'\n'"tags = $tags"
  [ -z "$iface" ] || conf+=$'\n'"interface = $iface"
  [ -z "$advertise" ] || conf+=$'\n'"advertise = $advertise"
  [ -z "$append_lines" ] || conf+=$'\n'"$append_lines"
  h_dest+=("$dest") h_name+=("$name") h_conf+=("$conf"$'\n') h_port+=("$port")
done < "$hosts_file"
[ ${#h_dest[@]} -gt 0 ] || die_usage "$hosts_file lists no host"

# ---- the script that runs on each host, as root ------------------------------------------------
# Its one argument is the directory the files were copied to; it removes that directory.
remote_script() {
  cat <<'REMOTE'
#!/bin/bash
set -euo pipefail
src=$1
apt=$2
start=$3
trap 'rm -rf -- "$src"' EXIT
data=/var/lib/hive-mesh/spore
conf=/etc/hive-mesh
libs="libzmq5 libcapnp-0.9.2 libsodium23 libboost-program-options1.74.0 libsqlite3-0"
say() { echo "[$(hostname)] $*"; }

# The files are copied to /tmp, which may be mounted noexec: check libraries where they run from.
for b in spore mesh; do
  install -m 0755 -o root -g root "$src/$b" "/usr/local/bin/.$b.new"
done
missing=$( (ldd /usr/local/bin/.spore.new || true; ldd /usr/local/bin/.mesh.new || true) |
  awk '/not found/ { print $1 }' | sort -u | tr '\n' ' ')
if [ -n "$missing" ]; then
  if [ "$apt" = 1 ]; then
    say "installing runtime libraries: $libs"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086  # a list of package names
    apt-get install -y -qq --no-install-recommends $libs > /dev/null ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends $libs > /dev/null; }
  else
    say "missing libraries: $missing; install them (Debian 12: apt-get install $libs) or rerun with --apt" >&2
    rm -f /usr/local/bin/.spore.new /usr/local/bin/.mesh.new
    exit 1
  fi
fi

if ! getent passwd hive-mesh > /dev/null; then
  useradd --system --user-group --home-dir /var/lib/hive-mesh --no-create-home \
    --shell /usr/sbin/nologin --comment "Hive Mesh" hive-mesh
  say "created the system user hive-mesh"
fi
install -d -m 0755 -o root -g root /var/lib/hive-mesh
install -d -m 0700 -o hive-mesh -g hive-mesh "$data"
install -d -m 0750 -o root -g hive-mesh "$conf"

# The new binaries were installed under a temporary name; renaming keeps a running spore's file.
for b in spore mesh; do mv -f "/usr/local/bin/.$b.new" "/usr/local/bin/$b"; done
install -m 0644 -o root -g root "$src/nexus.key.pub" "$conf/nexus.key.pub"
install -m 0640 -o root -g hive-mesh "$src/spore.conf" "$conf/spore.conf"
install -m 0644 -o root -g root "$src/hive-mesh-spore.service" /etc/systemd/system/hive-mesh-spore.service

# The key pair is made here and stays here. An existing one is kept: it may be accepted already.
if [ ! -e "$data/spore.key" ]; then
  runuser -u hive-mesh -- /usr/local/bin/mesh keys gen "$data/spore.key" > /dev/null
  say "generated the spore key pair in $data/spore.key"
fi
fingerprint=$(/usr/local/bin/mesh keys fingerprint "$data/spore.key.pub")

systemctl daemon-reload
systemctl enable --quiet hive-mesh-spore.service
if [ "$start" = 1 ]; then
  systemctl restart hive-mesh-spore.service
  for _ in 1 2 3 4 5 6 7 8 9 10; do  # a spore that cannot start exits within a second
    sleep 0.3
    systemctl is-active --quiet hive-mesh-spore.service || break
  done
  if ! systemctl is-active --quiet hive-mesh-spore.service; then
    say "hive-mesh-spore does not stay up: see journalctl -u hive-mesh-spore" >&2
    exit 1
  fi
  say "hive-mesh-spore (re)started"
fi
echo "hive-mesh-fingerprint: $fingerprint"
echo "hive-mesh-public-key-begin"
cat "$data/spore.key.pub"
echo "hive-mesh-public-key-end"
REMOTE
}

# ---- run ---------------------------------------------------------------------------------------
stage=$(mktemp -d "${TMPDIR:-/tmp}/install-spore.XXXXXX")
trap 'rm -rf -- "$stage"' EXIT
cp "$binary" "$stage/spore"
cp "$mesh_binary" "$stage/mesh"
cp "$nexus_key" "$stage/nexus.key.pub"
cp "$unit" "$stage/hive-mesh-spore.service"
remote_script > "$stage/install.sh"
bash -n "$stage/install.sh"

# show CMD...: prints a command, quoted so that it can be pasted into a shell.
show() {
  local a line="  \$"
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:@=,+-]+$ ]]; then line+=" $a"; else line+=" '${a//\'/\'\\\'\'}'"; fi
  done
  printf '%s\n' "$line"
}
# run CMD...: runs it, or only shows it with --dry-run.
run() {
  if [ $dry_run -eq 1 ]; then show "$@"; else "$@"; fi
}

echo "nexus key $nexus_key, fingerprint $nexus_fingerprint (compare it with 'mesh keys fingerprint' on the nexus host)"
if [ $dry_run -eq 1 ]; then
  echo "DRY RUN: nothing is copied, no host is contacted. The script each host runs as root:"
  sed 's/^/    | /' "$stage/install.sh"
fi
[ $dry_run -eq 1 ] || mkdir -p "$keys_dir"
failed=() done_names=() done_fps=() done_keys=()
z85_re='^[][0-9A-Za-z.:+=^!/*?&<>(){}@%$#-]{40}$'  # the Z85 alphabet
for i in "${!h_dest[@]}"; do
  dest=${h_dest[$i]} name=${h_name[$i]}
  [ -z "$ssh_user" ] || [[ $dest == *@* ]] || dest=$ssh_user@$dest
  ssh_cmd=(ssh "${ssh_options[@]}")
  scp_cmd=(scp -q "${ssh_options[@]}")
  if [ -n "${h_port[$i]}" ]; then
    ssh_cmd+=(-p "${h_port[$i]}")
    scp_cmd+=(-P "${h_port[$i]}")
  fi
  echo "== $dest (spore $name)"
  printf '%s' "${h_conf[$i]}" > "$stage/spore.conf"
  if [ $dry_run -eq 1 ]; then
    remote_dir=/tmp/hive-mesh-install.XXXXXX  # made by mktemp on the host
  elif ! remote_dir=$("${ssh_cmd[@]}" "$dest" mktemp -d /tmp/hive-mesh-install.XXXXXX) ||
    ! [[ $remote_dir =~ ^/tmp/hive-mesh-install\.[A-Za-z0-9]+$ ]]; then
    echo "  FAILED: cannot log in to $dest (or mktemp failed there)" >&2
    failed+=("$dest")
    continue
  fi
  # The remote shell parses this line: every word in it is quoted with %q.
  # shellcheck disable=SC2016  # $(id -u) and $s are expanded on the host
  remote_cmd=$(printf 'if [ "$(id -u)" -eq 0 ]; then s=; else s="sudo -n"; fi; $s bash %q %q %q %q' \
    "$remote_dir/install.sh" "$remote_dir" "$apt" "$start")
  files=("$stage/spore" "$stage/mesh" "$stage/nexus.key.pub" "$stage/hive-mesh-spore.service"
    "$stage/spore.conf" "$stage/install.sh")
  if [ $dry_run -eq 1 ]; then
    echo "  spore.conf:"
    sed 's/^/    | /' "$stage/spore.conf"
    show "${ssh_cmd[@]}" "$dest" mktemp -d /tmp/hive-mesh-install.XXXXXX
    show "${scp_cmd[@]}" "${files[@]##*/}" "$dest:$remote_dir/"
    show "${ssh_cmd[@]}" "$dest" "$remote_cmd"
    echo "  then saves the host's public key as $keys_dir/$name.pub"
    continue
  fi
  if ! "${scp_cmd[@]}" "${files[@]}" "$dest:$remote_dir/"; then
    echo "  FAILED: copying to $dest:$remote_dir" >&2
    "${ssh_cmd[@]}" "$dest" rm -rf -- "$remote_dir" || true
    failed+=("$dest")
    continue
  fi
  if ! "${ssh_cmd[@]}" "$dest" "$remote_cmd" > "$stage/out" 2> "$stage/err"; then
    sed 's/^/  /' "$stage/out" "$stage/err" >&2
    echo "  FAILED on $dest (see above; not root? the login user needs sudo without a password)" >&2
    "${ssh_cmd[@]}" "$dest" rm -rf -- "$remote_dir" || true
    failed+=("$dest")
    continue
  fi
  sed '/^hive-mesh-public-key-begin$/,$d' "$stage/out" | grep -v '^hive-mesh-fingerprint: ' | sed 's/^/  /' || true
  sed 's/^/  (stderr) /' "$stage/err" >&2
  fp=$(sed -n 's/^hive-mesh-fingerprint: \([0-9a-f:]*\)$/\1/p' "$stage/out")
  sed -n '/^hive-mesh-public-key-begin$/,/^hive-mesh-public-key-end$/p' "$stage/out" | sed '1d;$d' > "$keys_dir/$name.pub"
  local_fp=$("$mesh_binary" keys fingerprint "$keys_dir/$name.pub" 2> /dev/null || true)
  if [ -z "$fp" ] || [ "$fp" != "$local_fp" ]; then
    echo "  FAILED: the key reported by $dest does not check out (fingerprint '$fp', file gives '$local_fp')" >&2
    failed+=("$dest")
    continue
  fi
  z85=$(sed -n 's/^public-key = //p' "$keys_dir/$name.pub")
  # Z85 has no quote, backslash or blank: the printed command can single-quote it.
  [[ $z85 =~ $z85_re ]] || {
    echo "  FAILED: the public key from $dest is not a 40-character z85 key" >&2
    failed+=("$dest")
    continue
  }
  done_names+=("$name") done_fps+=("$fp") done_keys+=("$z85")
done

[ $dry_run -eq 0 ] || exit 0
if [ ${#done_names[@]} -gt 0 ]; then
  echo
  echo "Spore keys (saved in $keys_dir; they came over ssh, so they are the hosts' own):"
  for i in "${!done_names[@]}"; do printf '  %-24s %s\n' "${done_names[$i]}" "${done_fps[$i]}"; done
  echo
  echo "On the nexus host, let them in (each command carries the public key itself):"
  for i in "${!done_names[@]}"; do
    printf "  sudo -u hive-mesh mesh keys accept '%s' --role node --comment %s --data-dir %s\n" \
      "${done_keys[$i]}" "${done_names[$i]}" "$nexus_data_dir"
  done
  echo "Or, once the spores have tried to connect, compare 'mesh keys pending' with the fingerprints"
  echo "above and accept each by fingerprint. A refused spore retries within 32 s of the accept."
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED on ${#failed[@]} host(s): ${failed[*]}" >&2
  exit 1
fi
