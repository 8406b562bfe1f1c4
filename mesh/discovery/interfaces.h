// Network interfaces as discovery sees them: the IPv4 address and broadcast address of each
// interface (from getifaddrs), `--interface NAME` resolved to an address for binding and
// advertising, and the choice of broadcast targets for the nexus's beacon.
// IPv4 only: beacons are IPv4 broadcast; VPN and IPv6 deployments use `--nexus` seeds.
// Thread rule: free functions with no shared state, safe from any thread.
// Errors: an unknown interface, or one without the address asked for, is an Error whose message
// names the interface and lists the ones that exist.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mesh/util/result.h"

namespace mesh::discovery {

// One IPv4 address of one interface. An interface with several IPv4 addresses (aliases) appears
// once per address, in the kernel's order; the first is its primary address.
struct Ipv4Interface {
  std::string name;       // "eth0"
  unsigned index = 0;     // the kernel's ifindex (IP_PKTINFO reports it per datagram)
  std::string address;    // dotted quad, "192.168.1.20"
  std::string netmask;    // dotted quad
  std::string broadcast;  // dotted quad; empty when the interface has none (loopback, VPN tun)
  bool up = false;        // IFF_UP (administratively up)
  bool loopback = false;  // IFF_LOOPBACK
};

// Every IPv4 address of every interface, up or down. Error only when getifaddrs(3) fails.
util::Result<std::vector<Ipv4Interface>> listIpv4Interfaces();

// `--interface NAME` -> the interface's primary IPv4 address (for binding a socket to it or
// advertising it). Errors: no interface of that name; the interface has no IPv4 address.
// (The interface may be down: the caller decides whether that matters.)
util::Result<Ipv4Interface> resolveInterface(std::string_view name);

// Where a beacon goes: one interface's broadcast address.
struct BroadcastTarget {
  std::string interface;  // "eth0"
  std::string address;    // "192.168.1.255"
};

// Chooses broadcast targets from `all` (as listed by listIpv4Interfaces; a parameter so the rule
// is testable without the machine's interfaces).
// - `names` empty: every address of an up, non-loopback interface with a broadcast address.
//   An empty list is not an error (a host on a VPN only).
// - `names` given: every broadcast address of each named interface. Error when a named interface
//   does not exist, is down, or has no broadcast address (point-to-point links and VPN tunnels:
//   use `--nexus` seeds there).
// Duplicates (two aliases in one subnet) are listed once.
util::Result<std::vector<BroadcastTarget>> chooseBroadcastTargets(
    const std::vector<Ipv4Interface>& all, const std::vector<std::string>& names);

}  // namespace mesh::discovery
