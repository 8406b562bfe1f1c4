// The bundle manifest (schemas/bundle.capnp `Manifest`) and the bundle container's head:
//
//   bundle  = header | manifest bytes | signature block | payload
//   header  = "HIVEBNDL" | format version (u32 LE, 1) | manifest length (u32 LE, multiple of 8)
//   sigblk  = signer's Ed25519 public key (32) | Ed25519 signature (64)
//
// The signature covers kManifestDomain followed by the EXACT manifest bytes in the container;
// verification uses those received bytes, never a re-serialization. The payload (an archive, see
// archive.h) runs from the end of the signature block to the end of the bundle and is exactly
// manifest.payloadSize bytes long. docs/bundles.md documents all of this.
//
// Thread rule: pure functions, safe from any thread.
// Errors: decodeManifest is total (never throws on bad bytes) and returns an Error saying why.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mesh/bundle/release_key.h"
#include "mesh/util/result.h"

namespace mesh::bundle {

inline constexpr std::string_view kBundleMagic = "HIVEBNDL";
inline constexpr std::uint32_t kBundleFormatVersion = 1;
inline constexpr std::size_t kBundleHeaderBytes = 16;
inline constexpr std::size_t kSignatureBlockBytes = kPublicKeyBytes + kSignatureBytes;  // 96
// Domain separation: a signature over a manifest can never be replayed as a signature over
// anything else this key signs (the trailing NUL is part of the prefix).
inline constexpr std::string_view kManifestDomain{"hive-mesh bundle manifest v1\0", 29};
inline constexpr std::size_t kMaxHandlers = 256;

struct ManifestInfo {
  std::string name;                   // [a-z0-9][a-z0-9._-]{0,63}, not a reserved name
  std::uint64_t version = 0;          // >= 1, strictly increasing per name
  std::int64_t createdMs = 0;         // wall clock, ms since the Unix epoch
  std::int64_t expiresMs = 0;         // refused when the update starts at or after this
  std::uint64_t payloadSize = 0;      // bytes
  std::string payloadSha256;          // 32 raw bytes
  std::vector<std::string> handlers;  // top-level 0755 files of the payload, same rule as names
};

// Bundle and handler names: [a-z0-9][a-z0-9._-]{0,63}. A bundle name also may not be "audit.log"
// (it names a directory next to the audit log).
bool isValidBundleName(std::string_view name);
bool isValidHandlerName(std::string_view name);
// The handler a listed file provides on a spore: "NAME.serve" is the serve handler NAME, any
// other file the handler of its own name. The rule of exec::programName, which the spore's
// registry applies; repeated here because bundle/ may not use exec/ (registry_test checks that
// the two agree).
std::string providedHandler(std::string_view file);

// Precondition: `m` passes the rules decodeManifest checks (asserts otherwise).
std::string encodeManifest(const ManifestInfo& m);
// Decodes and checks untrusted manifest bytes (traversal and nesting limits, no trailing bytes,
// name rules, version >= 1, 32-byte hash, handlers unique and valid, createdMs <= expiresMs).
util::Result<ManifestInfo> decodeManifest(std::string_view bytes);

// Signs / verifies kManifestDomain + manifestBytes. The signature is 64 bytes.
std::string signManifest(std::string_view manifestBytes, const ReleaseKey& key);
bool verifyManifestSignature(std::string_view manifestBytes, std::string_view signature,
                             const ReleasePublicKey& signer);

// header | manifest | signer public key | signature. A bundle is this head followed by the payload.
std::string encodeBundleHead(std::string_view manifestBytes, const ReleasePublicKey& signer,
                             std::string_view signature);

// The parts of a complete head (as written by encodeBundleHead), for reading an installed
// bundle's saved head back. Checks the framing only, not the signature.
struct BundleHead {
  std::string manifestBytes;
  std::string signerKey;  // 32 raw bytes
  std::string signature;  // 64 raw bytes
};
util::Result<BundleHead> splitBundleHead(std::string_view head);

}  // namespace mesh::bundle
