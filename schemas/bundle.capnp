# Signed code bundles: the manifest that a release key signs. docs/bundles.md describes the
# format and the checks.
@0xf532aecfc5644446;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("mesh::proto");

struct Manifest {
  name @0 :Text;
  version @1 :UInt64;          # strictly increasing per name
  createdMs @2 :Int64;
  expiresMs @3 :Int64;
  payloadSize @4 :UInt64;
  payloadSha256 @5 :Data;      # 32 bytes
  handlers @6 :List(Text);
}
