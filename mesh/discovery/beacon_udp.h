// Beacons over UDP: BeaconSender (the nexus) and BeaconListener (a spore started without
// `--nexus`). Neither owns a thread: the nexus calls BeaconSender::sendIfDue() from its poll
// loop and folds the returned deadline into its poll timeout; the spore adds
// BeaconListener::fd() to its loop's wait (transport::Poller::addFd, or a zmq::poll item with
// that fd) and calls drain() when it is readable.
//
// Thread rule: each object is owned by one actor (the thread that polls it), like the
// util::Counters it writes to. Both sockets are non-blocking: no call here blocks, except that
// BeaconSender::open resolves host names in explicit targets (getaddrinfo) once, at start-up.
//
// Errors: opening returns an Error for bad configuration (unknown or unusable interface, bad
// target, invalid beacon, a port already taken without SO_REUSEPORT, no pinned key). After that
// nothing is fatal: send failures, receive failures and every refused datagram are counted under
// the counter names below and logged at most once a minute per kind (LogThrottle), with the peer.
#pragma once

#include <netinet/in.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mesh/discovery/beacon.h"
#include "mesh/util/log_throttle.h"
#include "mesh/discovery/unique_fd.h"
#include "mesh/util/clock.h"
#include "mesh/util/counters.h"
#include "mesh/util/result.h"

namespace mesh::discovery {

// Counter names (util::Counters), shown by `mesh status`.
inline constexpr const char* kCounterBeaconsSent = "discovery.beacons_sent";
inline constexpr const char* kCounterBeaconSendErrors = "discovery.beacon_send_errors";
inline constexpr const char* kCounterBeaconInterfaceErrors = "discovery.beacon_interface_errors";
inline constexpr const char* kCounterBeaconsAccepted = "discovery.beacons_accepted";
inline constexpr const char* kCounterBeaconsOversized = "discovery.beacons_dropped_oversized";
inline constexpr const char* kCounterBeaconsMalformed = "discovery.beacons_dropped_malformed";
inline constexpr const char* kCounterBeaconsWrongVersion = "discovery.beacons_dropped_version";
inline constexpr const char* kCounterBeaconsOtherCluster =
    "discovery.beacons_dropped_other_cluster";
inline constexpr const char* kCounterBeaconsUnpinnedKey = "discovery.beacons_dropped_unpinned_key";
inline constexpr const char* kCounterBeaconsWrongInterface = "discovery.beacons_dropped_interface";
inline constexpr const char* kCounterBeaconReceiveErrors = "discovery.beacon_receive_errors";

struct BeaconSenderOptions {
  // `--interface`: broadcast on these interfaces only. Empty: every up, non-loopback IPv4
  // interface with a broadcast address (see chooseBroadcastTargets).
  std::vector<std::string> interfaces;
  // Explicit "host:port" targets (IPv4 literal or name resolving to IPv4), sent to as well, by
  // unicast (or broadcast, if the operator names a broadcast address). When targets are given
  // and `interfaces` is empty, beacons go to the targets only, not to every interface.
  std::vector<std::string> targets;
  std::uint16_t port = kDefaultBeaconPort;  // destination port of the broadcast targets
  std::int64_t intervalMs = 1000;           // for sendIfDue()
};

class BeaconSender {
 public:
  // Errors: invalid beacon (validateBeacon); a named interface unknown, down or without
  // broadcast; a target that is not "host:port" or does not resolve to IPv4; an interval <= 0;
  // socket errors.
  // `counters` and `clock` must outlive the sender.
  static util::Result<BeaconSender> open(const Beacon& beacon, BeaconSenderOptions options,
                                         util::Counters& counters,
                                         const util::Clock& clock = util::systemClock());

  // Sends the beacon once to every target and returns how many sends succeeded. When
  // broadcasting on interfaces it first re-reads the interfaces (getifaddrs, cheap), so an
  // interface that comes up, goes down or changes address (DHCP) is followed without a restart;
  // a named interface that has gone is skipped, counted and logged, not fatal.
  std::size_t sendOnce();

  // Sends if a send is due by the clock (the first call always sends) and returns the monotonic
  // time in ms of the next one: the caller's poll timeout is at most that minus now. After a
  // stall it sends once, not a burst.
  std::int64_t sendIfDue();

  // The beacon to send from now on (the node port or advertised host changed). Error, and the
  // old beacon kept, when it does not validate.
  util::Status setBeacon(const Beacon& beacon);

  // The current targets, for the start-up log line: "192.168.1.255:7699 (eth0)".
  std::vector<std::string> targets() const;

 private:
  struct Destination {
    sockaddr_in address{};
    std::string label;
  };
  BeaconSender(UniqueFd fd, std::string datagram, BeaconSenderOptions options,
               std::vector<Destination> explicitTargets, util::Counters& counters,
               const util::Clock& clock);
  void refreshInterfaceTargets();

  UniqueFd fd_;
  std::string datagram_;
  BeaconSenderOptions options_;
  bool broadcastOnInterfaces_;
  std::vector<Destination> explicitTargets_;
  std::vector<Destination> interfaceTargets_;
  std::vector<std::string> failing_;  // labels whose last send failed, to log the recovery
  bool targetsLogged_ = false;
  std::int64_t nextSendMs_ = 0;
  util::Counters* counters_;
  const util::Clock* clock_;
  util::LogThrottle throttle_;
};

struct BeaconListenerOptions {
  std::string cluster;                     // required; beacons of other clusters are dropped
  std::vector<CurvePublicKey> pinnedKeys;  // required, non-empty; other nexus keys are dropped
  // IPv4 literal to bind. Only 0.0.0.0 (or the subnet's broadcast address) receives broadcasts:
  // binding to an interface's own address hears unicast only. To listen on one interface of a
  // multi-NIC host keep 0.0.0.0 and set `interfaces`.
  std::string bindAddress = "0.0.0.0";
  std::uint16_t port = kDefaultBeaconPort;  // 0 = an ephemeral port (tests), see port()
  // `--interface`: accept only datagrams that arrive on these interfaces (IP_PKTINFO).
  // Empty = any interface.
  std::vector<std::string> interfaces;
  // drain() reads at most this many datagrams per call, so a flood cannot starve the rest of
  // the poll loop; what is left keeps the fd readable for the next round.
  std::size_t maxDatagramsPerDrain = 64;
};

// One accepted beacon.
struct BeaconSighting {
  Beacon beacon;
  std::string sourceIp;  // the datagram's source address
  std::uint16_t sourcePort = 0;
  std::string interface;  // the interface it arrived on ("" if unknown)
  std::string endpoint;   // "tcp://HOST:PORT" to connect to (beaconEndpoint)
};

class BeaconListener {
 public:
  // Binds with SO_REUSEADDR and SO_REUSEPORT, so several spores on one host can all listen on
  // the same port. Broadcast datagrams reach every one of them; a *unicast* datagram reaches
  // exactly one (Linux picks one socket of a SO_REUSEPORT group by a hash of the source).
  // Errors: invalid cluster name, no pinned key, bad bind address, unknown interface, the port
  // held by a socket without SO_REUSEPORT (or another user's), socket errors.
  // `counters` and `clock` must outlive the listener.
  static util::Result<BeaconListener> open(BeaconListenerOptions options, util::Counters& counters,
                                           const util::Clock& clock = util::systemClock());

  // The socket to poll for ZMQ_POLLIN. Owned by the listener: do not close or read it.
  int fd() const { return fd_.get(); }
  // The bound port (the ephemeral one when options.port was 0).
  std::uint16_t port() const { return port_; }

  // Reads the pending datagrams (at most maxDatagramsPerDrain) and returns the accepted ones in
  // arrival order, one per datagram: the same nexus seen over two interfaces appears twice.
  // Drops and counts, in this order: oversized (> kMaxBeaconSize), wrong interface, wrong
  // protocol version, malformed, other cluster, unpinned key. Never blocks, never throws for
  // any input.
  std::vector<BeaconSighting> drain();

 private:
  BeaconListener(UniqueFd fd, std::uint16_t port, BeaconListenerOptions options,
                 util::Counters& counters, const util::Clock& clock);
  void drop(const char* counter, const std::string& from, const std::string& why, bool warn);

  UniqueFd fd_;
  std::uint16_t port_;
  BeaconListenerOptions options_;
  util::Counters* counters_;
  util::LogThrottle throttle_;
};

}  // namespace mesh::discovery
