// Tests of the discovery module: the beacon codec (including hostile input), the interface
// helpers, and BeaconSender -> BeaconListener over 127.0.0.1. Every datagram these tests send
// goes to 127.0.0.1 (loopback has no broadcast, so the sender is given unicast targets).
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "mesh/discovery/beacon.h"
#include "mesh/discovery/beacon_udp.h"
#include "mesh/discovery/interfaces.h"
#include "mesh/util/log_throttle.h"
#include "mesh/util/clock.h"
#include "mesh/util/counters.h"

using namespace mesh::discovery;
using mesh::util::Counters;
using mesh::util::ManualClock;

namespace {

CurvePublicKey keyOf(std::uint8_t seed) {
  CurvePublicKey k{};
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(seed * 31 + i);
  return k;
}

Beacon sampleBeacon() {
  Beacon b;
  b.cluster = "prod-eu.1";
  b.nodePort = 7700;
  b.nexusKey = keyOf(1);
  return b;
}

std::string validBytes() { return encodeBeacon(sampleBeacon()); }

// Offsets in the documented layout, for a beacon with cluster length C.
constexpr std::size_t kVersionAt = 4;
constexpr std::size_t kClusterLenAt = 6;
std::size_t portAt(std::size_t c) { return 7 + c; }
std::size_t hostLenAt(std::size_t c) { return 41 + c; }

// A plain UDP socket for sending hand-made datagrams to 127.0.0.1.
class RawSender {
 public:
  RawSender() : fd_(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) { REQUIRE(fd_.valid()); }
  void send(std::uint16_t port, const std::string& bytes) {
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::sendto(fd_.get(), bytes.data(), bytes.size(), 0,
                     reinterpret_cast<const sockaddr*>(&to),
                     sizeof to) == static_cast<ssize_t>(bytes.size()));
  }

 private:
  UniqueFd fd_;
};

// Every datagram a listener read ends in exactly one of these counters.
std::uint64_t listenerEvents(const Counters& c) {
  std::uint64_t n = 0;
  for (const char* name :
       {kCounterBeaconsAccepted, kCounterBeaconsOversized, kCounterBeaconsMalformed,
        kCounterBeaconsWrongVersion, kCounterBeaconsOtherCluster, kCounterBeaconsUnpinnedKey,
        kCounterBeaconsWrongInterface}) {
    n += c.get(name);
  }
  return n;
}

// Polls and drains until the listeners' counters have seen `expected` datagrams in all, or two
// seconds pass. Returns the sightings of each listener.
std::vector<std::vector<BeaconSighting>> drainUntil(std::vector<BeaconListener*> listeners,
                                                    const Counters& counters,
                                                    std::uint64_t expected) {
  std::vector<std::vector<BeaconSighting>> seen(listeners.size());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (listenerEvents(counters) < expected && std::chrono::steady_clock::now() < deadline) {
    std::vector<pollfd> fds;
    for (auto* l : listeners) fds.push_back({l->fd(), POLLIN, 0});
    ::poll(fds.data(), fds.size(), 50);
    for (std::size_t i = 0; i < listeners.size(); ++i) {
      for (auto& s : listeners[i]->drain()) seen[i].push_back(std::move(s));
    }
  }
  return seen;
}

std::vector<BeaconSighting> drainOne(BeaconListener& l, const Counters& c, std::uint64_t expected) {
  return drainUntil({&l}, c, expected)[0];
}

BeaconListenerOptions listenerOptions(std::uint16_t port = 0) {
  BeaconListenerOptions o;
  o.cluster = "prod-eu.1";
  o.pinnedKeys = {keyOf(1), keyOf(9)};
  o.bindAddress = "127.0.0.1";
  o.port = port;
  return o;
}

BeaconSender senderTo(const Beacon& b, std::uint16_t port, Counters& counters,
                      const mesh::util::Clock& clock = mesh::util::systemClock()) {
  BeaconSenderOptions o;
  o.targets = {"127.0.0.1:" + std::to_string(port)};
  auto s = BeaconSender::open(b, o, counters, clock);
  REQUIRE_MESSAGE(s.ok(), (s.ok() ? "" : s.error().message));
  return std::move(s).value();
}

BeaconListener openListener(const BeaconListenerOptions& o, Counters& counters) {
  auto l = BeaconListener::open(o, counters);
  REQUIRE_MESSAGE(l.ok(), (l.ok() ? "" : l.error().message));
  return std::move(l).value();
}

}  // namespace

// ---- codec -------------------------------------------------------------------------------------

TEST_CASE("a beacon survives an encode/decode round trip") {
  Beacon b = sampleBeacon();
  auto d = decodeBeacon(encodeBeacon(b));
  REQUIRE(d.ok());
  CHECK(*d == b);

  b.advertisedHost = "nexus-1.lan";
  d = decodeBeacon(encodeBeacon(b));
  REQUIRE(d.ok());
  CHECK(*d == b);

  b.advertisedHost = "fd00::1";
  d = decodeBeacon(encodeBeacon(b));
  REQUIRE(d.ok());
  CHECK(*d == b);
}

TEST_CASE("the largest beacon is exactly kMaxBeaconSize and still decodes") {
  Beacon b = sampleBeacon();
  b.cluster = std::string(kMaxClusterNameSize, 'c');
  b.advertisedHost = std::string(kMaxAdvertisedHostSize, 'h');
  b.nodePort = 65535;
  const std::string bytes = encodeBeacon(b);
  CHECK(bytes.size() == kMaxBeaconSize);
  CHECK(kMaxBeaconSize < 508);  // fits an unfragmented IPv4 datagram anywhere
  auto d = decodeBeacon(bytes);
  REQUIRE(d.ok());
  CHECK(*d == b);
}

TEST_CASE("the encoded bytes follow the documented layout") {
  Beacon b = sampleBeacon();  // cluster "prod-eu.1": C = 9
  b.advertisedHost = "10.0.0.5";
  const std::string bytes = encodeBeacon(b);
  REQUIRE(bytes.size() == 42 + 9 + 8);
  CHECK(bytes.substr(0, 4) == "HMB1");
  CHECK(bytes[kVersionAt] == 0);
  CHECK(bytes[kVersionAt + 1] == 1);
  CHECK(bytes[kClusterLenAt] == 9);
  CHECK(bytes.substr(7, 9) == "prod-eu.1");
  CHECK(static_cast<std::uint8_t>(bytes[portAt(9)]) == 7700 >> 8);  // big-endian
  CHECK(static_cast<std::uint8_t>(bytes[portAt(9) + 1]) == (7700 & 0xff));
  CHECK(std::equal(b.nexusKey.begin(), b.nexusKey.end(),
                   reinterpret_cast<const std::uint8_t*>(bytes.data()) + 9 + 9));
  CHECK(bytes[hostLenAt(9)] == 8);
  CHECK(bytes.substr(42 + 9) == "10.0.0.5");
}

TEST_CASE("a beacon truncated at every length is refused") {
  Beacon b = sampleBeacon();
  b.advertisedHost = "nexus.lan";
  const std::string bytes = encodeBeacon(b);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    CAPTURE(n);
    CHECK_FALSE(decodeBeacon(std::string_view(bytes).substr(0, n)).ok());
  }
}

TEST_CASE("an oversized beacon is refused") {
  Beacon b = sampleBeacon();
  b.cluster = std::string(kMaxClusterNameSize, 'c');
  b.advertisedHost = std::string(kMaxAdvertisedHostSize, 'h');
  std::string bytes = encodeBeacon(b);
  bytes.push_back('h');
  auto d = decodeBeacon(bytes);
  REQUIRE_FALSE(d.ok());
  CHECK(d.error().message.find("longer than the maximum") != std::string::npos);
  CHECK_FALSE(decodeBeacon(std::string(65536, 'x')).ok());
}

TEST_CASE("a beacon with the wrong magic is refused") {
  for (std::size_t i = 0; i < 4; ++i) {
    std::string bytes = validBytes();
    bytes[i] = static_cast<char>(bytes[i] ^ 0x20);
    auto d = decodeBeacon(bytes);
    REQUIRE_FALSE(d.ok());
    CHECK(d.error().message.find("magic") != std::string::npos);
  }
}

TEST_CASE("a beacon with an unsupported protocol version is refused") {
  for (std::uint16_t v : {0, 2, 0x0100, 0xffff}) {
    std::string bytes = validBytes();
    bytes[kVersionAt] = static_cast<char>(v >> 8);
    bytes[kVersionAt + 1] = static_cast<char>(v & 0xff);
    auto d = decodeBeacon(bytes);
    REQUIRE_FALSE(d.ok());
    CHECK(d.error().message.find("protocol version") != std::string::npos);
  }
}

TEST_CASE("a beacon whose cluster name has a bad character is refused") {
  for (char bad : {' ', '/', '\0', '\n', ':', '*', static_cast<char>(0xc3)}) {
    CAPTURE(static_cast<int>(bad));
    std::string bytes = validBytes();
    bytes[7 + 4] = bad;  // inside "prod-eu.1"
    CHECK_FALSE(decodeBeacon(bytes).ok());
  }
}

TEST_CASE("a beacon whose cluster length is 0 or over 64 is refused") {
  std::string bytes = validBytes();
  bytes[kClusterLenAt] = 0;
  CHECK_FALSE(decodeBeacon(bytes).ok());
  Beacon b = sampleBeacon();
  b.cluster = std::string(64, 'c');
  bytes = encodeBeacon(b);
  bytes[kClusterLenAt] = 65;
  bytes.insert(7, "c");  // 65 bytes really follow: only the limit is wrong
  CHECK_FALSE(decodeBeacon(bytes).ok());
}

TEST_CASE("a beacon whose lengths disagree with its size is refused") {
  std::string bytes = validBytes();
  bytes[kClusterLenAt] = 10;  // claims one byte more than "prod-eu.1"
  CHECK_FALSE(decodeBeacon(bytes).ok());
  bytes = validBytes();
  bytes[hostLenAt(9)] = 1;  // claims a host that is not there
  CHECK_FALSE(decodeBeacon(bytes).ok());
  bytes = validBytes();
  bytes[hostLenAt(9)] = static_cast<char>(254);
  bytes += std::string(254, 'h');  // 254 bytes follow; the datagram is under the max
  CHECK_FALSE(decodeBeacon(bytes).ok());
}

TEST_CASE("a beacon with node port zero is refused") {
  std::string bytes = validBytes();
  bytes[portAt(9)] = 0;
  bytes[portAt(9) + 1] = 0;
  auto d = decodeBeacon(bytes);
  REQUIRE_FALSE(d.ok());
  CHECK(d.error().message.find("port") != std::string::npos);
}

TEST_CASE("a beacon with trailing bytes is refused") {
  std::string bytes = validBytes() + '\0';
  auto d = decodeBeacon(bytes);
  REQUIRE_FALSE(d.ok());
  CHECK(d.error().message.find("trailing") != std::string::npos);
}

TEST_CASE("a beacon whose advertised host is not a host name or IP literal is refused") {
  for (const std::string& host :
       std::vector<std::string>{"a b", "x;rm", "host/path", "[fd00::1]", "fd00::zz", "fe80::1%eth0",
                                std::string("n\0l", 3)}) {
    CAPTURE(host);
    std::string bytes = validBytes();
    bytes[hostLenAt(9)] = static_cast<char>(host.size());
    bytes += host;
    CHECK_FALSE(decodeBeacon(bytes).ok());
    Beacon b = sampleBeacon();
    b.advertisedHost = host;
    CHECK_FALSE(validateBeacon(b).ok());
  }
}

TEST_CASE("encodeBeacon refuses, as a bug, a beacon that does not validate") {
  Beacon b = sampleBeacon();
  b.nodePort = 0;
  CHECK_FALSE(validateBeacon(b).ok());
  CHECK_THROWS_AS(encodeBeacon(b), std::logic_error);
  b = sampleBeacon();
  b.cluster = "";
  CHECK_FALSE(validateBeacon(b).ok());
  b.cluster = std::string(65, 'c');
  CHECK_FALSE(validateBeacon(b).ok());
  b.cluster = "has space";
  CHECK_FALSE(validateBeacon(b).ok());
  b = sampleBeacon();
  b.advertisedHost = std::string(254, 'h');
  CHECK_FALSE(validateBeacon(b).ok());
}

TEST_CASE("random bytes and random mutations never throw, and only canonical beacons pass") {
  std::mt19937 rng(20261122);
  auto byte = [&rng] { return static_cast<char>(rng() & 0xff); };
  Beacon withHost = sampleBeacon();
  withHost.advertisedHost = "192.168.7.1";
  const std::vector<std::string> seeds = {validBytes(), encodeBeacon(withHost)};
  std::size_t accepted = 0;
  for (int round = 0; round < 50000; ++round) {
    std::string bytes;
    if (round % 5 == 0) {  // pure noise, any length up to twice the maximum
      bytes.resize(rng() % (2 * kMaxBeaconSize));
      for (auto& c : bytes) c = byte();
    } else {  // a valid beacon with 1..4 mutations
      bytes = seeds[rng() % seeds.size()];
      for (unsigned m = 0, count = 1 + rng() % 4; m < count; ++m) {
        const std::size_t at = bytes.empty() ? 0 : rng() % bytes.size();
        switch (rng() % 4) {
          case 0:
            if (!bytes.empty()) bytes[at] = byte();
            break;
          case 1:
            if (!bytes.empty()) bytes[at] = static_cast<char>(bytes[at] ^ (1 << rng() % 8));
            break;
          case 2:
            bytes.insert(at, 1, byte());
            break;
          case 3:
            if (!bytes.empty()) bytes.erase(at, 1);
            break;
        }
      }
    }
    mesh::util::Result<Beacon> d = mesh::util::err("unset");
    REQUIRE_NOTHROW(d = decodeBeacon(bytes));
    if (!d.ok()) continue;
    ++accepted;
    // Whatever passes has the right magic and is exactly the encoding of what it decoded to.
    REQUIRE(bytes.substr(0, 4) == "HMB1");
    REQUIRE(validateBeacon(*d).ok());
    REQUIRE(encodeBeacon(*d) == bytes);
  }
  CHECK(accepted > 0);  // mutations of the name, key or port bytes stay valid: the loop bites
}

TEST_CASE("the endpoint is the advertised host, else the source, with IPv6 in brackets") {
  Beacon b = sampleBeacon();
  CHECK(beaconEndpoint(b, "192.168.1.20") == "tcp://192.168.1.20:7700");
  b.advertisedHost = "nexus.lan";
  CHECK(beaconEndpoint(b, "192.168.1.20") == "tcp://nexus.lan:7700");
  b.advertisedHost = "fd00::1";
  CHECK(beaconEndpoint(b, "192.168.1.20") == "tcp://[fd00::1]:7700");
}

TEST_CASE("the log throttle lets one line per interval through and counts the rest") {
  ManualClock clock;
  mesh::util::LogThrottle t(clock, 60'000);
  REQUIRE(t.admit("a").has_value());
  CHECK(*t.admit("b") == 0);  // kinds are independent
  CHECK_FALSE(t.admit("a").has_value());
  CHECK_FALSE(t.admit("a").has_value());
  clock.advanceMs(59'999);
  CHECK_FALSE(t.admit("a").has_value());
  clock.advanceMs(1);
  auto line = t.admit("a");
  REQUIRE(line.has_value());
  CHECK(*line == 3);
  CHECK_FALSE(t.admit("a").has_value());
}

// ---- interfaces --------------------------------------------------------------------------------

TEST_CASE("the interface listing finds lo at 127.0.0.1") {
  auto all = listIpv4Interfaces();
  REQUIRE(all.ok());
  auto lo =
      std::find_if(all->begin(), all->end(), [](const Ipv4Interface& i) { return i.name == "lo"; });
  REQUIRE(lo != all->end());
  CHECK(lo->address == "127.0.0.1");
  CHECK(lo->loopback);
  CHECK(lo->up);
  CHECK(lo->index != 0);
  CHECK(lo->broadcast.empty());
  auto resolved = resolveInterface("lo");
  REQUIRE(resolved.ok());
  CHECK(resolved->address == "127.0.0.1");
}

TEST_CASE("an unknown interface is an Error that names it and lists the real ones") {
  auto r = resolveInterface("nosuchif0");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("nosuchif0") != std::string::npos);
  CHECK(r.error().message.find("lo") != std::string::npos);
  CHECK_FALSE(resolveInterface("").ok());
  CHECK_FALSE(resolveInterface(std::string(100, 'x')).ok());
}

TEST_CASE("broadcast targets by default are the up, non-loopback interfaces with a broadcast") {
  const std::vector<Ipv4Interface> all = {
      {"lo", 1, "127.0.0.1", "255.0.0.0", "", true, true},
      {"eth0", 2, "192.168.1.20", "255.255.255.0", "192.168.1.255", true, false},
      {"eth0", 2, "192.168.1.21", "255.255.255.0", "192.168.1.255", true, false},  // alias
      {"eth1", 3, "10.0.0.2", "255.255.0.0", "10.0.255.255", false, false},        // down
      {"wg0", 4, "10.9.0.2", "255.255.255.0", "", true, false},                    // tunnel
      {"eth2", 5, "172.16.0.9", "255.255.0.0", "172.16.255.255", true, false},
  };
  auto chosen = chooseBroadcastTargets(all, {});
  REQUIRE(chosen.ok());
  REQUIRE(chosen->size() == 2);
  CHECK((*chosen)[0].interface == "eth0");
  CHECK((*chosen)[0].address == "192.168.1.255");
  CHECK((*chosen)[1].interface == "eth2");
  CHECK((*chosen)[1].address == "172.16.255.255");

  chosen = chooseBroadcastTargets(all, {"eth2"});
  REQUIRE(chosen.ok());
  REQUIRE(chosen->size() == 1);
  CHECK((*chosen)[0].address == "172.16.255.255");

  auto down = chooseBroadcastTargets(all, {"eth1"});
  REQUIRE_FALSE(down.ok());
  CHECK(down.error().message.find("down") != std::string::npos);
  auto tunnel = chooseBroadcastTargets(all, {"wg0"});
  REQUIRE_FALSE(tunnel.ok());
  CHECK(tunnel.error().message.find("--nexus") != std::string::npos);
  CHECK_FALSE(chooseBroadcastTargets(all, {"lo"}).ok());
  auto unknown = chooseBroadcastTargets(all, {"eth2", "nosuchif0"});
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().message.find("nosuchif0") != std::string::npos);
}

// ---- sender -> listener over 127.0.0.1 ---------------------------------------------------------

TEST_CASE("a beacon sent to 127.0.0.1 is accepted with endpoint tcp://127.0.0.1:PORT") {
  Counters counters;
  BeaconListener listener = openListener(listenerOptions(), counters);
  REQUIRE(listener.port() != 0);
  BeaconSender sender = senderTo(sampleBeacon(), listener.port(), counters);
  CHECK(sender.targets() ==
        std::vector<std::string>{"127.0.0.1:" + std::to_string(listener.port())});
  CHECK(sender.sendOnce() == 1);
  auto seen = drainOne(listener, counters, 1);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].endpoint == "tcp://127.0.0.1:7700");
  CHECK(seen[0].sourceIp == "127.0.0.1");
  CHECK(seen[0].sourcePort != 0);
  CHECK(seen[0].interface == "lo");
  CHECK(seen[0].beacon == sampleBeacon());
  CHECK(counters.get(kCounterBeaconsSent) == 1);
  CHECK(counters.get(kCounterBeaconsAccepted) == 1);

  Beacon advertised = sampleBeacon();
  advertised.advertisedHost = "nexus.lan";
  REQUIRE(sender.setBeacon(advertised).ok());
  CHECK_FALSE(sender.setBeacon(Beacon{}).ok());  // refused; the advertised one stays
  CHECK(sender.sendOnce() == 1);
  seen = drainOne(listener, counters, 2);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].endpoint == "tcp://nexus.lan:7700");
}

TEST_CASE("a beacon of another cluster is ignored and counted") {
  Counters counters;
  BeaconListener listener = openListener(listenerOptions(), counters);
  Beacon other = sampleBeacon();
  other.cluster = "staging";
  BeaconSender sender = senderTo(other, listener.port(), counters);
  CHECK(sender.sendOnce() == 1);
  CHECK(drainOne(listener, counters, 1).empty());
  CHECK(counters.get(kCounterBeaconsOtherCluster) == 1);
  CHECK(counters.get(kCounterBeaconsAccepted) == 0);
}

TEST_CASE("a beacon carrying an unpinned nexus key is ignored and counted") {
  Counters counters;
  BeaconListener listener = openListener(listenerOptions(), counters);
  Beacon impostor = sampleBeacon();
  impostor.nexusKey = keyOf(2);
  BeaconSender bad = senderTo(impostor, listener.port(), counters);
  Beacon second = sampleBeacon();
  second.nexusKey = keyOf(9);  // the other pinned key: accepted
  BeaconSender good = senderTo(second, listener.port(), counters);
  CHECK(bad.sendOnce() == 1);
  CHECK(good.sendOnce() == 1);
  auto seen = drainOne(listener, counters, 2);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].beacon.nexusKey == keyOf(9));
  CHECK(counters.get(kCounterBeaconsUnpinnedKey) == 1);
  CHECK(counters.get(kCounterBeaconsAccepted) == 1);
}

TEST_CASE("oversized, malformed and other-version datagrams are each dropped and counted") {
  Counters counters;
  BeaconListener listener = openListener(listenerOptions(), counters);
  RawSender raw;
  raw.send(listener.port(), std::string(kMaxBeaconSize + 1, 'x'));  // fits the buffer, too big
  raw.send(listener.port(), std::string(4000, 'x'));                // larger than the buffer
  raw.send(listener.port(), std::string("HMB1\x00\x01\xc8", 7) + std::string(60, 'x'));
  raw.send(listener.port(), "");
  std::string v2 = validBytes();
  v2[kVersionAt + 1] = 2;
  raw.send(listener.port(), v2);
  raw.send(listener.port(), validBytes());  // and a good one after all that still gets in
  auto seen = drainOne(listener, counters, 6);
  CHECK(counters.get(kCounterBeaconsOversized) == 2);
  CHECK(counters.get(kCounterBeaconsMalformed) == 2);
  CHECK(counters.get(kCounterBeaconsWrongVersion) == 1);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].beacon == sampleBeacon());
}

TEST_CASE("drain reads at most maxDatagramsPerDrain datagrams per call") {
  Counters counters;
  auto options = listenerOptions();
  options.maxDatagramsPerDrain = 2;
  BeaconListener listener = openListener(options, counters);
  RawSender raw;
  for (int i = 0; i < 5; ++i) raw.send(listener.port(), validBytes());
  std::size_t total = 0, calls = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (total < 5 && std::chrono::steady_clock::now() < deadline) {
    pollfd p{listener.fd(), POLLIN, 0};
    ::poll(&p, 1, 50);
    const std::size_t n = listener.drain().size();
    CHECK(n <= 2);
    if (n > 0) ++calls;
    total += n;
  }
  CHECK(total == 5);
  CHECK(calls >= 3);
}

TEST_CASE("two listeners share a port; a unicast beacon reaches exactly one of them") {
  // SO_REUSEPORT lets both bind. Linux delivers a *broadcast* datagram to every socket bound to
  // the port (that is what several spores on one host rely on), but a *unicast* one to a single
  // socket of the group, chosen by a hash of the source. Tests may not send broadcasts, so this
  // checks the unicast facts: both bind, each datagram is delivered once, datagrams from many
  // source ports are spread over both (with SO_REUSEADDR alone Linux also lets both bind but
  // gives every unicast datagram to the last one bound), and when one listener closes the other
  // gets everything.
  Counters counters;
  auto first = std::make_optional(openListener(listenerOptions(), counters));
  BeaconListener second = openListener(listenerOptions(first->port()), counters);
  CHECK(second.port() == first->port());
  // Distinct source ports; the chance that a uniform hash sends all 32 to one socket is 2^-31.
  constexpr int kSenders = 32;
  for (int i = 0; i < kSenders; ++i) {
    CHECK(senderTo(sampleBeacon(), first->port(), counters).sendOnce() == 1);
  }
  auto seen = drainUntil({&*first, &second}, counters, kSenders);
  CHECK(seen[0].size() + seen[1].size() == kSenders);
  CHECK(seen[0].size() > 0);
  CHECK(seen[1].size() > 0);
  CHECK(counters.get(kCounterBeaconsAccepted) == kSenders);

  first.reset();
  CHECK(senderTo(sampleBeacon(), second.port(), counters).sendOnce() == 1);
  CHECK(drainOne(second, counters, kSenders + 1).size() == 1);
}

TEST_CASE("a listener restricted to an interface drops beacons that arrive on another") {
  Counters counters;
  auto options = listenerOptions();
  options.interfaces = {"lo"};
  BeaconListener onLo = openListener(options, counters);
  CHECK(senderTo(sampleBeacon(), onLo.port(), counters).sendOnce() == 1);
  CHECK(drainOne(onLo, counters, 1).size() == 1);

  auto all = listIpv4Interfaces();
  REQUIRE(all.ok());
  auto other =
      std::find_if(all->begin(), all->end(), [](const Ipv4Interface& i) { return !i.loopback; });
  if (other == all->end()) {
    MESSAGE("no non-loopback IPv4 interface here: the refusing half is not exercised");
    return;
  }
  Counters counters2;
  options.interfaces = {other->name};
  BeaconListener elsewhere = openListener(options, counters2);
  CHECK(senderTo(sampleBeacon(), elsewhere.port(), counters2).sendOnce() == 1);
  CHECK(drainOne(elsewhere, counters2, 1).empty());
  CHECK(counters2.get(kCounterBeaconsWrongInterface) == 1);
}

TEST_CASE("sendIfDue sends at once and then once per interval by the clock") {
  Counters counters;
  ManualClock clock;
  BeaconListener listener = openListener(listenerOptions(), counters);
  BeaconSender sender = senderTo(sampleBeacon(), listener.port(), counters, clock);
  const std::int64_t start = clock.monotonicMs();
  CHECK(sender.sendIfDue() == start + 1000);
  CHECK(counters.get(kCounterBeaconsSent) == 1);
  CHECK(sender.sendIfDue() == start + 1000);
  clock.advanceMs(999);
  sender.sendIfDue();
  CHECK(counters.get(kCounterBeaconsSent) == 1);
  clock.advanceMs(1);
  CHECK(sender.sendIfDue() == start + 2000);
  CHECK(counters.get(kCounterBeaconsSent) == 2);
  clock.advanceMs(10'000);  // a stalled loop sends once, not ten times
  CHECK(sender.sendIfDue() == start + 12'000);
  CHECK(counters.get(kCounterBeaconsSent) == 3);
  CHECK(drainOne(listener, counters, 3).size() == 3);
}

TEST_CASE("opening a listener refuses bad configuration with a clear Error") {
  Counters counters;
  auto o = listenerOptions();
  o.pinnedKeys.clear();
  auto r = BeaconListener::open(o, counters);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("pinned") != std::string::npos);
  o = listenerOptions();
  o.cluster = "bad cluster";
  CHECK_FALSE(BeaconListener::open(o, counters).ok());
  o = listenerOptions();
  o.bindAddress = "not-an-ip";
  CHECK_FALSE(BeaconListener::open(o, counters).ok());
  o = listenerOptions();
  o.interfaces = {"nosuchif0"};
  r = BeaconListener::open(o, counters);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("nosuchif0") != std::string::npos);
}

TEST_CASE("opening a sender refuses bad targets, unknown interfaces and invalid beacons") {
  Counters counters;
  for (const std::string& target :
       std::vector<std::string>{"127.0.0.1", "127.0.0.1:", ":7699", "127.0.0.1:0",
                                "127.0.0.1:65536", "127.0.0.1:http", "[::1]:7699"}) {
    CAPTURE(target);
    BeaconSenderOptions o;
    o.targets = {target};
    CHECK_FALSE(BeaconSender::open(sampleBeacon(), o, counters).ok());
  }
  BeaconSenderOptions o;
  o.interfaces = {"nosuchif0"};
  auto r = BeaconSender::open(sampleBeacon(), o, counters);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("nosuchif0") != std::string::npos);
  o.interfaces = {"lo"};  // exists, but loopback has no broadcast
  CHECK_FALSE(BeaconSender::open(sampleBeacon(), o, counters).ok());
  o = BeaconSenderOptions{};
  o.targets = {"127.0.0.1:7699"};
  Beacon b = sampleBeacon();
  b.cluster = "";
  CHECK_FALSE(BeaconSender::open(b, o, counters).ok());
  CHECK(counters.get(kCounterBeaconsSent) == 0);  // nothing was sent by any of this
}
