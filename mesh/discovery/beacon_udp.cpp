#include "mesh/discovery/beacon_udp.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "mesh/discovery/interfaces.h"
#include "mesh/util/bytes.h"
#include "mesh/util/log.h"

namespace mesh::discovery {
namespace {

// Larger than any beacon, so that with MSG_TRUNC an oversized datagram is measured, not cut.
constexpr std::size_t kReceiveBufferSize = 2048;
static_assert(kReceiveBufferSize > kMaxBeaconSize);

using util::heldBack;

std::string errnoText(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

std::string ipText(const in_addr& addr) {
  char text[INET_ADDRSTRLEN] = {};
  if (inet_ntop(AF_INET, &addr, text, sizeof text) == nullptr) return "?";
  return text;
}

std::string addressText(const sockaddr_in& a) {
  return ipText(a.sin_addr) + ":" + std::to_string(ntohs(a.sin_port));
}

util::Result<UniqueFd> udpSocket() {
  UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return util::err(errnoText("cannot create a UDP socket"));
  return fd;
}

util::Status setFlag(int fd, int level, int option, const char* name) {
  const int one = 1;
  if (::setsockopt(fd, level, option, &one, sizeof one) != 0) {
    return util::err(errnoText((std::string("cannot set ") + name).c_str()));
  }
  return {};
}

// "host:port" -> an IPv4 address; host is an IPv4 literal or a name (resolved here, blocking).
util::Result<sockaddr_in> resolveTarget(const std::string& target) {
  const auto colon = target.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == target.size() ||
      target.front() == '[') {
    return util::err("beacon target '" + target + "' is not HOST:PORT with an IPv4 host");
  }
  const std::string host = target.substr(0, colon);
  const std::string portText = target.substr(colon + 1);
  unsigned long port = 0;
  const auto isDigit = [](char c) { return c >= '0' && c <= '9'; };
  if (portText.size() > 5 || !std::all_of(portText.begin(), portText.end(), isDigit) ||
      (port = std::stoul(portText)) == 0 || port > 65535) {
    return util::err("beacon target '" + target + "' has no port in 1..65535");
  }
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &found);
  if (rc != 0 || found == nullptr) {
    return util::err("beacon target '" + target + "': cannot resolve '" + host +
                     "' to an IPv4 address: " + ::gai_strerror(rc));
  }
  sockaddr_in out{};
  std::memcpy(&out, found->ai_addr, sizeof out);
  ::freeaddrinfo(found);
  out.sin_port = htons(static_cast<std::uint16_t>(port));
  return out;
}

// True for a datagram with our magic and size whose only fault may be its protocol version:
// an upgrade in progress, counted apart from garbage.
bool speaksOtherVersion(std::string_view datagram) {
  if (datagram.size() < kMinBeaconSize || datagram.size() > kMaxBeaconSize) return false;
  if (datagram.substr(0, kBeaconMagic.size()) != kBeaconMagic) return false;
  const auto hi = static_cast<std::uint8_t>(datagram[4]),
             lo = static_cast<std::uint8_t>(datagram[5]);
  return (hi << 8 | lo) != kBeaconProtocolVersion;
}

}  // namespace

// ---- BeaconSender ------------------------------------------------------------------------------

BeaconSender::BeaconSender(UniqueFd fd, std::string datagram, BeaconSenderOptions options,
                           std::vector<Destination> explicitTargets, util::Counters& counters,
                           const util::Clock& clock)
    : fd_(std::move(fd)),
      datagram_(std::move(datagram)),
      options_(std::move(options)),
      broadcastOnInterfaces_(!options_.interfaces.empty() || options_.targets.empty()),
      explicitTargets_(std::move(explicitTargets)),
      counters_(&counters),
      clock_(&clock),
      throttle_(clock) {}

util::Result<BeaconSender> BeaconSender::open(const Beacon& beacon, BeaconSenderOptions options,
                                              util::Counters& counters, const util::Clock& clock) {
  if (auto valid = validateBeacon(beacon); !valid) return valid.error();
  if (options.intervalMs <= 0) return util::err("the beacon interval must be positive");
  std::vector<Destination> explicitTargets;
  for (const auto& t : options.targets) {
    auto address = resolveTarget(t);
    if (!address) return address.error();
    explicitTargets.push_back({*address, addressText(*address)});
  }
  if (!options.interfaces.empty()) {
    // Refuse a typo at start-up; later changes are followed by sendOnce().
    auto all = listIpv4Interfaces();
    if (!all) return all.error();
    auto chosen = chooseBroadcastTargets(*all, options.interfaces);
    if (!chosen) return chosen.error();
  }
  auto fd = udpSocket();
  if (!fd) return fd.error();
  if (auto s = setFlag(fd->get(), SOL_SOCKET, SO_BROADCAST, "SO_BROADCAST"); !s) return s.error();
  BeaconSender sender(std::move(*fd), encodeBeacon(beacon), std::move(options),
                      std::move(explicitTargets), counters, clock);
  if (sender.broadcastOnInterfaces_) sender.refreshInterfaceTargets();
  return sender;
}

void BeaconSender::refreshInterfaceTargets() {
  auto all = listIpv4Interfaces();
  if (!all) {  // keep the previous targets
    counters_->add(kCounterBeaconInterfaceErrors);
    if (auto n = throttle_.admit("interfaces")) {
      MESH_WARN("beacon: %s%s", all.error().message.c_str(), heldBack(*n).c_str());
    }
    return;
  }
  std::vector<BroadcastTarget> chosen;
  if (options_.interfaces.empty()) {
    chosen = std::move(*chooseBroadcastTargets(*all, {}));
  } else {
    for (const auto& name : options_.interfaces) {  // one at a time: one gone, the rest still work
      auto one = chooseBroadcastTargets(*all, {name});
      if (!one) {
        counters_->add(kCounterBeaconInterfaceErrors);
        if (auto n = throttle_.admit("interface " + name)) {
          MESH_WARN("beacon: not sending on %s: %s%s", name.c_str(), one.error().message.c_str(),
                    heldBack(*n).c_str());
        }
        continue;
      }
      chosen.insert(chosen.end(), one->begin(), one->end());
    }
  }
  std::vector<Destination> next;
  for (const auto& t : chosen) {
    Destination d;
    d.address.sin_family = AF_INET;
    d.address.sin_port = htons(options_.port);
    if (inet_pton(AF_INET, t.address.c_str(), &d.address.sin_addr) != 1) continue;
    d.label = addressText(d.address) + " (" + t.interface + ")";
    next.push_back(std::move(d));
  }
  auto labels = [](const std::vector<Destination>& v) {
    std::string out;
    for (const auto& d : v) out += (out.empty() ? "" : ", ") + d.label;
    return out;
  };
  const std::string before = labels(interfaceTargets_), after = labels(next);
  if (before != after || !targetsLogged_) {
    targetsLogged_ = true;
    if (next.empty()) {
      MESH_WARN(
          "beacon: no interface to broadcast on (none up with an IPv4 broadcast address): "
          "spores on this network need --nexus tcp://HOST:PORT");
    } else {
      MESH_INFO("beacon: broadcasting on %s", after.c_str());
    }
  }
  interfaceTargets_ = std::move(next);
}

std::size_t BeaconSender::sendOnce() {
  if (broadcastOnInterfaces_) refreshInterfaceTargets();
  std::size_t sent = 0;
  for (const auto* list : {&interfaceTargets_, &explicitTargets_}) {
    for (const auto& d : *list) {
      const ssize_t n = ::sendto(fd_.get(), datagram_.data(), datagram_.size(), MSG_NOSIGNAL,
                                 reinterpret_cast<const sockaddr*>(&d.address), sizeof d.address);
      const int sendErrno = errno;
      auto failing = std::find(failing_.begin(), failing_.end(), d.label);
      if (n == static_cast<ssize_t>(datagram_.size())) {
        ++sent;
        counters_->add(kCounterBeaconsSent);
        if (failing != failing_.end()) {
          failing_.erase(failing);
          MESH_INFO("beacon: sending to %s again", d.label.c_str());
        }
        continue;
      }
      const std::string why = n < 0 ? std::strerror(sendErrno) : "short send";
      counters_->add(kCounterBeaconSendErrors);
      if (failing == failing_.end()) failing_.push_back(d.label);
      if (auto skipped = throttle_.admit("send " + d.label)) {
        MESH_WARN("beacon: cannot send to %s: %s; trying again every interval%s", d.label.c_str(),
                  why.c_str(), heldBack(*skipped).c_str());
      }
    }
  }
  return sent;
}

std::int64_t BeaconSender::sendIfDue() {
  const std::int64_t now = clock_->monotonicMs();
  if (now >= nextSendMs_) {
    sendOnce();
    nextSendMs_ = now + options_.intervalMs;
  }
  return nextSendMs_;
}

util::Status BeaconSender::setBeacon(const Beacon& beacon) {
  if (auto valid = validateBeacon(beacon); !valid) return valid;
  datagram_ = encodeBeacon(beacon);
  return {};
}

std::vector<std::string> BeaconSender::targets() const {
  std::vector<std::string> out;
  for (const auto* list : {&interfaceTargets_, &explicitTargets_}) {
    for (const auto& d : *list) out.push_back(d.label);
  }
  return out;
}

// ---- BeaconListener ----------------------------------------------------------------------------

BeaconListener::BeaconListener(UniqueFd fd, std::uint16_t port, BeaconListenerOptions options,
                               util::Counters& counters, const util::Clock& clock)
    : fd_(std::move(fd)),
      port_(port),
      options_(std::move(options)),
      counters_(&counters),
      throttle_(clock) {}

util::Result<BeaconListener> BeaconListener::open(BeaconListenerOptions options,
                                                  util::Counters& counters,
                                                  const util::Clock& clock) {
  if (!isValidClusterName(options.cluster)) {
    return util::err("cluster name '" + options.cluster + "' is not 1 to 64 characters of " +
                     "A-Z a-z 0-9 . _ -");
  }
  if (options.pinnedKeys.empty()) {
    return util::err(
        "beacon discovery needs the nexus public key pinned (a spore trusts only "
        "the nexus it was given); set it, or start the spore with --nexus");
  }
  for (const auto& name : options.interfaces) {
    if (auto resolved = resolveInterface(name); !resolved) return resolved.error();
  }
  sockaddr_in bindTo{};
  bindTo.sin_family = AF_INET;
  bindTo.sin_port = htons(options.port);
  if (inet_pton(AF_INET, options.bindAddress.c_str(), &bindTo.sin_addr) != 1) {
    return util::err("beacon bind address '" + options.bindAddress +
                     "' is not an IPv4 address (use 0.0.0.0 to hear broadcasts)");
  }
  if (options.maxDatagramsPerDrain == 0) options.maxDatagramsPerDrain = 1;
  auto fd = udpSocket();
  if (!fd) return fd.error();
  for (auto [option, name] :
       {std::pair{SO_REUSEADDR, "SO_REUSEADDR"}, std::pair{SO_REUSEPORT, "SO_REUSEPORT"}}) {
    if (auto s = setFlag(fd->get(), SOL_SOCKET, option, name); !s) return s.error();
  }
  if (auto s = setFlag(fd->get(), IPPROTO_IP, IP_PKTINFO, "IP_PKTINFO"); !s) return s.error();
  if (::bind(fd->get(), reinterpret_cast<const sockaddr*>(&bindTo), sizeof bindTo) != 0) {
    const int e = errno;
    std::string message =
        "cannot listen for beacons on " + addressText(bindTo) + ": " + std::strerror(e);
    if (e == EADDRINUSE) {
      message +=
          " (another program holds the port without SO_REUSEPORT, or it runs as "
          "another user; choose another --beacon-port or stop it)";
    }
    return util::err(message);
  }
  sockaddr_in bound{};
  socklen_t len = sizeof bound;
  if (::getsockname(fd->get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    return util::err(errnoText("getsockname on the beacon socket"));
  }
  return BeaconListener(std::move(*fd), ntohs(bound.sin_port), std::move(options), counters, clock);
}

void BeaconListener::drop(const char* counter, const std::string& from, const std::string& why,
                          bool warn) {
  counters_->add(counter);
  if (auto skipped = throttle_.admit(counter)) {
    if (warn) {
      MESH_WARN("beacon from %s dropped: %s%s", from.c_str(), why.c_str(),
                heldBack(*skipped).c_str());
    } else {
      MESH_INFO("beacon from %s ignored: %s%s", from.c_str(), why.c_str(),
                heldBack(*skipped).c_str());
    }
  }
}

std::vector<BeaconSighting> BeaconListener::drain() {
  std::vector<BeaconSighting> out;
  std::vector<unsigned> wanted;  // interface indexes, looked up per call: interfaces come and go
  for (const auto& name : options_.interfaces) {
    if (unsigned index = if_nametoindex(name.c_str()); index != 0) wanted.push_back(index);
  }
  std::array<char, kReceiveBufferSize> buffer;
  alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(in_pktinfo))> control;
  for (std::size_t i = 0; i < options_.maxDatagramsPerDrain; ++i) {
    sockaddr_in from{};
    iovec iov{buffer.data(), buffer.size()};
    msghdr msg{};
    msg.msg_name = &from;
    msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    const ssize_t n = ::recvmsg(fd_.get(), &msg, MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0) {
      const int e = errno;
      if (e == EINTR) continue;
      if (e != EAGAIN && e != EWOULDBLOCK) {
        counters_->add(kCounterBeaconReceiveErrors);
        if (auto skipped = throttle_.admit(kCounterBeaconReceiveErrors)) {
          MESH_WARN("beacon: receive failed: %s%s", std::strerror(e), heldBack(*skipped).c_str());
        }
      }
      break;
    }
    const std::string source = addressText(from);
    const auto size = static_cast<std::size_t>(n);
    if (size > kMaxBeaconSize || (msg.msg_flags & MSG_TRUNC) != 0) {
      drop(kCounterBeaconsOversized, source,
           std::to_string(size) + " bytes, over the " + std::to_string(kMaxBeaconSize) +
               "-byte limit",
           true);
      continue;
    }
    unsigned arrivedOn = 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
        in_pktinfo info{};
        std::memcpy(&info, CMSG_DATA(c), sizeof info);
        arrivedOn = static_cast<unsigned>(info.ipi_ifindex);
      }
    }
    char nameBuffer[IF_NAMESIZE] = {};
    const std::string interface =
        arrivedOn != 0 && if_indextoname(arrivedOn, nameBuffer) != nullptr ? nameBuffer : "";
    if (!options_.interfaces.empty() &&
        std::find(wanted.begin(), wanted.end(), arrivedOn) == wanted.end()) {
      drop(kCounterBeaconsWrongInterface, source,
           "arrived on " + (interface.empty() ? std::string("an unknown interface") : interface) +
               ", not on a --interface one",
           false);
      continue;
    }
    const std::string_view datagram(buffer.data(), size);
    auto beacon = decodeBeacon(datagram);
    if (!beacon) {
      drop(speaksOtherVersion(datagram) ? kCounterBeaconsWrongVersion : kCounterBeaconsMalformed,
           source, beacon.error().message, true);
      continue;
    }
    if (beacon->cluster != options_.cluster) {
      drop(kCounterBeaconsOtherCluster, source,
           "cluster '" + beacon->cluster + "', not '" + options_.cluster + "'", false);
      continue;
    }
    if (std::find(options_.pinnedKeys.begin(), options_.pinnedKeys.end(), beacon->nexusKey) ==
        options_.pinnedKeys.end()) {
      const std::string key(reinterpret_cast<const char*>(beacon->nexusKey.data()),
                            beacon->nexusKey.size());
      drop(kCounterBeaconsUnpinnedKey, source,
           "nexus key " + util::toHex(key) + " of cluster '" + beacon->cluster +
               "' is not the pinned one (a second nexus, a re-keyed nexus, or an impostor)",
           true);
      continue;
    }
    counters_->add(kCounterBeaconsAccepted);
    BeaconSighting s;
    s.sourceIp = ipText(from.sin_addr);
    s.sourcePort = ntohs(from.sin_port);
    s.interface = interface;
    s.endpoint = beaconEndpoint(*beacon, s.sourceIp);
    s.beacon = std::move(*beacon);
    MESH_DEBUG("beacon from %s on %s: nexus at %s", source.c_str(),
               interface.empty() ? "?" : interface.c_str(), s.endpoint.c_str());
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace mesh::discovery
