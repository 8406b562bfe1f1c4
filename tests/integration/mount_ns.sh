# Sourced first (before lib.sh) by the tests that mount a tmpfs: runs the test again inside a
# mount namespace of its own, so that nothing is mounted on the host, or skips it (77) where
# that cannot be done. Usage: . "$(dirname "$0")/mount_ns.sh" TEST_NAME
if [ -z "${MESH_TEST_MOUNT_NS:-}" ]; then
  [ "$EUID" -eq 0 ] || { echo "SKIP: $1: mounting a tmpfs needs root (CI runs the tests as root)"; exit 77; }
  command -v unshare > /dev/null 2>&1 || { echo "SKIP: $1: no unshare (util-linux)"; exit 77; }
  unshare -m --propagation private true 2> /dev/null || { echo "SKIP: $1: cannot make a mount namespace"; exit 77; }
  MESH_TEST_MOUNT_NS=1 exec unshare -m --propagation private bash "$0"
fi
