# Signed code bundles: the manifest that a release key signs. docs/bundles.md describes the
# format and the checks. The manifest is serialized as one flat (unpacked) Cap'n Proto message;
# the release key signs "hive-mesh bundle manifest v1\0" followed by those exact bytes, and
# receivers verify the bytes they received, never a re-serialization. Rules for changing this
# file: never renumber or retype a field; add fields at the end (old signed manifests keep their
# meaning because verification never re-encodes them).
@0xf532aecfc5644446;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("mesh::proto");

struct Manifest {
  name @0 :Text;               # [a-z0-9][a-z0-9._-]{0,63}; not "audit.log"
  version @1 :UInt64;          # >= 1, strictly increasing per name
  createdMs @2 :Int64;         # wall clock, ms since the Unix epoch
  expiresMs @3 :Int64;         # refused by an update that starts at or after this time
  payloadSize @4 :UInt64;      # exact length of the payload archive in bytes
  payloadSha256 @5 :Data;      # 32 bytes
  handlers @6 :List(Text);     # handler names; each is a top-level 0755 file of the payload
}
