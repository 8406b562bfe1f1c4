// Beacon: the UDP datagram a nexus broadcasts on its LAN (every second, port 7699) so that a
// spore started without `--nexus` learns where to connect. A beacon says only *where*; the Curve
// handshake proves *who*: a spore acts on a beacon only if it carries a nexus public key the spore
// has pinned, and an attacker who copies that public key into a forged beacon gets nothing but a
// failed handshake.
//
// Wire layout, version "HMB1" (all integers big-endian; no padding; one beacon per datagram):
//
//   offset   size  field
//   0        4     magic            "HMB1" (0x48 0x4D 0x42 0x31); a new layout gets a new magic
//   4        2     protocolVersion  the mesh protocol version (schemas/mesh.capnp protocolVersion);
//                                   a receiver drops versions it does not speak
//   6        1     clusterLen C     1..64
//   7        C     cluster          C bytes of [A-Za-z0-9._-]
//   7+C      2     nodePort         the nexus's node (ROUTER) port, 1..65535
//   9+C      32    nexusKey         the nexus's Curve public key, 32 raw bytes
//   41+C     1     hostLen H        0..253
//   42+C     H     host             advertised host: a DNS name or IPv4 literal of
//                                   [A-Za-z0-9._-], or an IPv6 literal (contains ':', must parse);
//                                   empty = connect to the datagram's source address
//   42+C+H         end              the datagram ends here: trailing bytes are an error
//
// Sizes: 43 bytes at least (C = 1, H = 0), kMaxBeaconSize = 42 + 64 + 253 = 359 at most, well
// under the 508-byte payload that IPv4 delivers without fragmentation.
//
// Thread rule: pure functions, safe from any thread.
// Errors: decodeBeacon is total: for any input it returns a Beacon or an Error naming the first
// fault, and never throws. encodeBeacon's precondition is validateBeacon(b).ok(); breaking it is
// a bug and throws std::logic_error (MESH_ASSERT).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "mesh/util/result.h"

namespace mesh::discovery {

inline constexpr std::string_view kBeaconMagic = "HMB1";
// Must equal `protocolVersion` in schemas/mesh.capnp (discovery does not depend on the schema).
inline constexpr std::uint16_t kBeaconProtocolVersion = 1;
inline constexpr std::uint16_t kDefaultBeaconPort = 7699;
inline constexpr std::size_t kMaxClusterNameSize = 64;
inline constexpr std::size_t kMaxAdvertisedHostSize = 253;
inline constexpr std::size_t kCurveKeySize = 32;
inline constexpr std::size_t kMinBeaconSize = 4 + 2 + 1 + 1 + 2 + kCurveKeySize + 1;  // 43
inline constexpr std::size_t kMaxBeaconSize =
    kMinBeaconSize - 1 + kMaxClusterNameSize + kMaxAdvertisedHostSize;  // 359

// A Curve public key in its raw 32-byte form (not z85).
using CurvePublicKey = std::array<std::uint8_t, kCurveKeySize>;

struct Beacon {
  std::string cluster;         // 1..64 bytes of [A-Za-z0-9._-]
  std::uint16_t nodePort = 0;  // non-zero
  CurvePublicKey nexusKey{};
  std::string advertisedHost;  // empty = "use the datagram's source address"

  bool operator==(const Beacon&) const = default;
};

// True for 1..64 bytes of [A-Za-z0-9._-].
bool isValidClusterName(std::string_view name);
// True for "" or an advertised host as the layout above allows.
bool isValidAdvertisedHost(std::string_view host);

// Checks a beacon built from configuration (`--cluster`, `--advertise`, the node port) before it
// is sent; the Error says which field is wrong and what is allowed.
util::Status validateBeacon(const Beacon& beacon);

// Precondition: validateBeacon(beacon).ok(). Returns the datagram, at most kMaxBeaconSize bytes.
std::string encodeBeacon(const Beacon& beacon);

// Total decoder. Errors: shorter than kMinBeaconSize or any field cut off; longer than
// kMaxBeaconSize; wrong magic; protocol version other than kBeaconProtocolVersion; a length out
// of range; a character outside the allowed set; node port 0; bytes after the host.
util::Result<Beacon> decodeBeacon(std::string_view datagram);

// "tcp://HOST:PORT" for a beacon that arrived from `sourceIp`: the advertised host when present,
// else the source; IPv6 literals are bracketed ("tcp://[fd00::1]:7700").
std::string beaconEndpoint(const Beacon& beacon, std::string_view sourceIp);

}  // namespace mesh::discovery
