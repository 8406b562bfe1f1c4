#include "mesh/discovery/beacon.h"

#include <arpa/inet.h>

#include <algorithm>

namespace mesh::discovery {
namespace {

bool isNameChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

bool allNameChars(std::string_view text) {
  return std::all_of(text.begin(), text.end(), isNameChar);
}

bool isIpv6Literal(std::string_view host) {
  if (host.size() >= INET6_ADDRSTRLEN) return false;
  const std::string zeroTerminated(host);
  in6_addr addr{};
  return inet_pton(AF_INET6, zeroTerminated.c_str(), &addr) == 1;
}

void putU16(std::string& out, std::uint16_t v) {
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v & 0xff));
}

// Reads the datagram front to back; every read checks what is left, so no read can overrun.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  std::size_t left() const { return data_.size() - pos_; }
  bool u8(std::uint8_t* v) {
    if (left() < 1) return false;
    *v = static_cast<std::uint8_t>(data_[pos_++]);
    return true;
  }
  bool u16(std::uint16_t* v) {
    if (left() < 2) return false;
    *v = static_cast<std::uint16_t>(static_cast<std::uint8_t>(data_[pos_]) << 8 |
                                    static_cast<std::uint8_t>(data_[pos_ + 1]));
    pos_ += 2;
    return true;
  }
  bool bytes(std::size_t n, std::string_view* v) {
    if (left() < n) return false;
    *v = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }

 private:
  std::string_view data_;
  std::size_t pos_ = 0;
};

util::Error truncated(const char* field) {
  return util::err(std::string("beacon is truncated in its ") + field);
}

}  // namespace

bool isValidClusterName(std::string_view name) {
  return !name.empty() && name.size() <= kMaxClusterNameSize && allNameChars(name);
}

bool isValidAdvertisedHost(std::string_view host) {
  if (host.size() > kMaxAdvertisedHostSize) return false;
  if (host.find(':') != std::string_view::npos) return isIpv6Literal(host);
  return allNameChars(host);
}

util::Status validateBeacon(const Beacon& beacon) {
  if (!isValidClusterName(beacon.cluster)) {
    return util::err("cluster name '" + beacon.cluster + "' is not 1 to 64 characters of " +
                     "A-Z a-z 0-9 . _ -");
  }
  if (beacon.nodePort == 0) return util::err("beacon node port is 0: give the nexus a node port");
  if (!isValidAdvertisedHost(beacon.advertisedHost)) {
    return util::err("advertised host '" + beacon.advertisedHost + "' is not a host name or " +
                     "IP address of at most 253 characters (letters, digits, . _ - or an IPv6 " +
                     "literal without brackets)");
  }
  return {};
}

std::string encodeBeacon(const Beacon& beacon) {
  MESH_ASSERT(validateBeacon(beacon).ok(), "encodeBeacon needs a valid beacon");
  std::string out;
  out.reserve(kMinBeaconSize - 1 + beacon.cluster.size() + beacon.advertisedHost.size());
  out.append(kBeaconMagic);
  putU16(out, kBeaconProtocolVersion);
  out.push_back(static_cast<char>(beacon.cluster.size()));
  out.append(beacon.cluster);
  putU16(out, beacon.nodePort);
  out.append(reinterpret_cast<const char*>(beacon.nexusKey.data()), beacon.nexusKey.size());
  out.push_back(static_cast<char>(beacon.advertisedHost.size()));
  out.append(beacon.advertisedHost);
  MESH_ASSERT(out.size() <= kMaxBeaconSize, "encoded beacon within kMaxBeaconSize");
  return out;
}

util::Result<Beacon> decodeBeacon(std::string_view datagram) {
  if (datagram.size() < kMinBeaconSize) {
    return util::err("beacon is " + std::to_string(datagram.size()) + " bytes, shorter than " +
                     "the minimum " + std::to_string(kMinBeaconSize));
  }
  if (datagram.size() > kMaxBeaconSize) {
    return util::err("beacon is " + std::to_string(datagram.size()) + " bytes, longer than " +
                     "the maximum " + std::to_string(kMaxBeaconSize));
  }
  Reader in(datagram);
  std::string_view magic;
  if (!in.bytes(kBeaconMagic.size(), &magic) || magic != kBeaconMagic) {
    return util::err("not a beacon: wrong magic");
  }
  std::uint16_t version = 0;
  if (!in.u16(&version)) return truncated("protocol version");
  if (version != kBeaconProtocolVersion) {
    return util::err("beacon speaks protocol version " + std::to_string(version) +
                     "; this node speaks " + std::to_string(kBeaconProtocolVersion));
  }
  Beacon b;
  std::uint8_t len = 0;
  std::string_view text;
  if (!in.u8(&len)) return truncated("cluster length");
  if (len == 0 || len > kMaxClusterNameSize) {
    return util::err("beacon cluster name length " + std::to_string(len) + " is not 1..64");
  }
  if (!in.bytes(len, &text)) return truncated("cluster name");
  if (!allNameChars(text)) {
    return util::err("beacon cluster name has a character outside [A-Za-z0-9._-]");
  }
  b.cluster = text;
  if (!in.u16(&b.nodePort)) return truncated("node port");
  if (b.nodePort == 0) return util::err("beacon node port is 0");
  if (!in.bytes(kCurveKeySize, &text)) return truncated("nexus key");
  std::copy(text.begin(), text.end(), b.nexusKey.begin());
  if (!in.u8(&len)) return truncated("host length");
  if (len > kMaxAdvertisedHostSize) {
    return util::err("beacon host length " + std::to_string(len) + " is over 253");
  }
  if (!in.bytes(len, &text)) return truncated("advertised host");
  if (!isValidAdvertisedHost(text)) {
    return util::err("beacon advertised host is not a host name or IP literal");
  }
  b.advertisedHost = text;
  if (in.left() != 0) {
    return util::err("beacon has " + std::to_string(in.left()) + " trailing bytes");
  }
  return b;
}

std::string beaconEndpoint(const Beacon& beacon, std::string_view sourceIp) {
  const std::string_view host = beacon.advertisedHost.empty() ? sourceIp : beacon.advertisedHost;
  std::string out = "tcp://";
  if (host.find(':') != std::string_view::npos) {
    out.append("[").append(host).append("]");
  } else {
    out.append(host);
  }
  out.append(":").append(std::to_string(beacon.nodePort));
  return out;
}

}  // namespace mesh::discovery
