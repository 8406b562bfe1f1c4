// Names shared by the nexus, the spore and the client: ZAP domains, the software version.
#pragma once

#include <string>

#include "mesh/crypto/keys.h"

namespace mesh::node {

// One ZAP domain per server port: the ZAP handler admits a key on a port only if its role may
// use that port (a client key never gets onto the node port).
inline constexpr const char* kNodeDomain = "mesh-node";
inline constexpr const char* kClientDomain = "mesh-client";
inline constexpr const char* kEventsDomain = "mesh-events";

inline constexpr const char* kSoftwareVersion = "0.1.0";

// The fingerprint of a z85 key, or "?" when the text is not a key.
inline std::string fingerprintOf(const std::string& z85) {
  auto k = crypto::PublicKey::fromZ85(z85);
  return k ? k->fingerprint() : std::string("?");
}

}  // namespace mesh::node
