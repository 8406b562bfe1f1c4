#include "mesh/discovery/interfaces.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

namespace mesh::discovery {
namespace {

std::string dottedQuad(const sockaddr* sa) {
  if (sa == nullptr || sa->sa_family != AF_INET) return {};
  char text[INET_ADDRSTRLEN] = {};
  const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
  if (inet_ntop(AF_INET, &in->sin_addr, text, sizeof text) == nullptr) return {};
  return text;
}

// "eth0, lo" for error messages: every interface name the kernel knows, IPv4 or not.
std::string knownInterfaceNames() {
  std::unique_ptr<struct if_nameindex, decltype(&if_freenameindex)> list(if_nameindex(),
                                                                         &if_freenameindex);
  if (!list) return "(cannot list interfaces)";
  std::vector<std::string> names;
  for (const struct if_nameindex* p = list.get(); p->if_index != 0 && p->if_name != nullptr; ++p) {
    names.emplace_back(p->if_name);
  }
  std::sort(names.begin(), names.end());
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "(none)" : out;
}

util::Error unknownInterface(std::string_view name) {
  return util::err("unknown network interface '" + std::string(name) + "': this host has " +
                   knownInterfaceNames() + " (see `ip -br addr`)");
}

}  // namespace

util::Result<std::vector<Ipv4Interface>> listIpv4Interfaces() {
  ifaddrs* raw = nullptr;
  if (getifaddrs(&raw) != 0) {
    return util::err(std::string("cannot list network interfaces: getifaddrs: ") +
                     std::strerror(errno));
  }
  std::unique_ptr<ifaddrs, decltype(&freeifaddrs)> list(raw, &freeifaddrs);
  std::vector<Ipv4Interface> out;
  for (const ifaddrs* p = list.get(); p != nullptr; p = p->ifa_next) {
    if (p->ifa_addr == nullptr || p->ifa_addr->sa_family != AF_INET || p->ifa_name == nullptr) {
      continue;
    }
    Ipv4Interface i;
    i.name = p->ifa_name;
    i.index = if_nametoindex(p->ifa_name);
    i.address = dottedQuad(p->ifa_addr);
    i.netmask = dottedQuad(p->ifa_netmask);
    // ifa_broadaddr and ifa_dstaddr share storage; it is a broadcast address only with
    // IFF_BROADCAST.
    if ((p->ifa_flags & IFF_BROADCAST) != 0) i.broadcast = dottedQuad(p->ifa_broadaddr);
    i.up = (p->ifa_flags & IFF_UP) != 0;
    i.loopback = (p->ifa_flags & IFF_LOOPBACK) != 0;
    out.push_back(std::move(i));
  }
  return out;
}

util::Result<Ipv4Interface> resolveInterface(std::string_view name) {
  auto all = listIpv4Interfaces();
  if (!all) return all.error();
  for (const auto& i : *all) {
    if (i.name == name) return i;
  }
  const std::string n(name);
  if (n.empty() || n.size() >= IF_NAMESIZE || if_nametoindex(n.c_str()) == 0) {
    return unknownInterface(name);
  }
  return util::err("network interface '" + n + "' has no IPv4 address: give it one, or name " +
                   "another interface (this host has " + knownInterfaceNames() + ")");
}

util::Result<std::vector<BroadcastTarget>> chooseBroadcastTargets(
    const std::vector<Ipv4Interface>& all, const std::vector<std::string>& names) {
  std::vector<BroadcastTarget> out;
  auto add = [&out](const Ipv4Interface& i) {
    const bool seen = std::any_of(out.begin(), out.end(), [&i](const BroadcastTarget& t) {
      return t.address == i.broadcast;
    });
    if (!seen) out.push_back({i.name, i.broadcast});
  };
  if (names.empty()) {
    for (const auto& i : all) {
      if (i.up && !i.loopback && !i.broadcast.empty()) add(i);
    }
    return out;
  }
  for (const auto& name : names) {
    bool exists = false, up = false, hasBroadcast = false;
    for (const auto& i : all) {
      if (i.name != name) continue;
      exists = true;
      up = up || i.up;
      if (!i.up || i.broadcast.empty()) continue;
      hasBroadcast = true;
      add(i);
    }
    if (!exists) {
      if (if_nametoindex(name.c_str()) == 0) return unknownInterface(name);
      return util::err("network interface '" + name + "' has no IPv4 address, so no beacon " +
                       "can be broadcast on it");
    }
    if (!up) {
      return util::err("network interface '" + name + "' is down: bring it up (`ip link set " +
                       name + " up`) or name another interface");
    }
    if (!hasBroadcast) {
      return util::err("network interface '" + name + "' has no IPv4 broadcast address " +
                       "(a point-to-point link or VPN tunnel?): beacons cannot cross it; " +
                       "start the spores with --nexus tcp://HOST:PORT instead");
    }
  }
  return out;
}

}  // namespace mesh::discovery
