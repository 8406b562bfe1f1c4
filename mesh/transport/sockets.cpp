#include "mesh/transport/sockets.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>

#include "mesh/util/clock.h"

namespace mesh::transport {

zmq::context_t makeContext(int ioThreads) {
  zmq::context_t ctx;
  // ZMQ_ZERO_COPY_RECV (10) is a draft name in Debian's header; the option is in the library.
  zmq_ctx_set(ctx.handle(), 10, 0);
  // Takes effect because no socket exists yet (libzmq starts its threads with the first one).
  zmq_ctx_set(ctx.handle(), ZMQ_IO_THREADS, std::max(ioThreads, 1));
  return ctx;
}

namespace {
void applyCommon(zmq::socket_t& s, const SocketLimits& limits) {
  s.set(zmq::sockopt::linger, limits.lingerMs);
  s.set(zmq::sockopt::maxmsgsize, limits.maxMessageBytes);
  s.set(zmq::sockopt::sndhwm, limits.sendHwm);
  s.set(zmq::sockopt::rcvhwm, limits.recvHwm);
  // IPv6 endpoints ("tcp://[::1]:7700") as well as IPv4 ones; binding "*" listens on both.
  s.set(zmq::sockopt::ipv6, 1);
}
}  // namespace

zmq::socket_t makeServerSocket(zmq::context_t& ctx, zmq::socket_type type,
                               const crypto::KeyPair& serverKeys, const std::string& zapDomain,
                               const SocketLimits& limits) {
  MESH_ASSERT(!zapDomain.empty(), "a server socket needs a ZAP domain");
  zmq::socket_t s(ctx, type);
  applyCommon(s, limits);
  s.set(zmq::sockopt::curve_server, 1);
  s.set(zmq::sockopt::curve_secretkey, serverKeys.secretKey.z85());
  s.set(zmq::sockopt::zap_domain, zapDomain);
  int enforce = 1;
  // Not among cppzmq's typed options (a draft option until libzmq 4.3.x): the C API.
  if (zmq_setsockopt(s.handle(), kZapEnforceDomain, &enforce, sizeof enforce) != 0) throw zmq::error_t();
  if (type == zmq::socket_type::router) {
    s.set(zmq::sockopt::router_mandatory, 1);
  }
  return s;
}

zmq::socket_t makeClientSocket(zmq::context_t& ctx, zmq::socket_type type,
                               const crypto::KeyPair& ownKeys, const crypto::PublicKey& serverKey,
                               const SocketLimits& limits) {
  zmq::socket_t s(ctx, type);
  applyCommon(s, limits);
  s.set(zmq::sockopt::curve_serverkey, serverKey.z85());
  s.set(zmq::sockopt::curve_publickey, ownKeys.publicKey.z85());
  s.set(zmq::sockopt::curve_secretkey, ownKeys.secretKey.z85());
  // libzmq's own reconnect backoff: 1 s doubling to 32 s (DESIGN.md section 4).
  s.set(zmq::sockopt::reconnect_ivl, 1000);
  s.set(zmq::sockopt::reconnect_ivl_max, 32000);
  return s;
}

util::Result<std::string> bindSocket(zmq::socket_t& socket, const std::string& endpoint) {
  try {
    socket.bind(endpoint);
  } catch (const zmq::error_t& e) {
    return util::err("cannot bind " + endpoint + ": " + e.what());
  }
  std::string bound = socket.get(zmq::sockopt::last_endpoint);
  // With ZMQ_IPV6 on, an IPv4 bind is reported as an IPv4-mapped address: show it as IPv4.
  const std::string prefix = "tcp://[";
  auto close = bound.find(']');
  if (bound.rfind(prefix, 0) == 0 && close != std::string::npos) {
    std::string host = bound.substr(prefix.size(), close - prefix.size());
    std::string plain = plainAddress(host);
    if (plain != host) bound = "tcp://" + plain + bound.substr(close + 1);
  }
  return bound;
}

std::string plainAddress(const std::string& address) {
  const std::string mapped = "::ffff:";
  if (address.rfind(mapped, 0) == 0 && address.find('.') != std::string::npos) return address.substr(mapped.size());
  return address;
}

std::string peerAddress(zmq::message_t& frame) {
  const char* a = zmq_msg_gets(frame.handle(), "Peer-Address");
  return a ? plainAddress(a) : std::string();
}

std::string userId(zmq::message_t& frame) {
  const char* id = zmq_msg_gets(frame.handle(), "User-Id");
  return id ? std::string(id) : std::string();
}

namespace {
std::atomic<unsigned> gMonitorSeq{0};
}

HandshakeWatch::HandshakeWatch(zmq::context_t& ctx, zmq::socket_t& socket) : socket_(&socket) {
  endpoint_ = "inproc://mesh-handshake-" + std::to_string(getpid()) + "-" + std::to_string(gMonitorSeq++);
  int rc = zmq_socket_monitor(socket.handle(), endpoint_.c_str(),
                              ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                  ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                  ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL);
  MESH_ASSERT(rc == 0, "zmq_socket_monitor");
  monitor_ = zmq::socket_t(ctx, zmq::socket_type::pair);
  monitor_.connect(endpoint_);
}

HandshakeWatch::~HandshakeWatch() { zmq_socket_monitor(socket_->handle(), nullptr, 0); }

namespace {
// A handshake monitor event in words, for an operator (libzmq's event number and value).
std::string describeHandshakeFailure(std::uint16_t event, std::uint32_t value) {
  char hex[16];
  std::snprintf(hex, sizeof hex, "0x%x", value);
  switch (event) {
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
      return std::string("the peer closed the connection during the Curve handshake: ") + std::strerror(static_cast<int>(value));
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
      return std::string("the Curve handshake broke the protocol (libzmq code ") + hex + ")";
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
      return "the peer refused this key (ZAP status " + std::to_string(value) + ")";
    default:
      return "handshake event " + std::to_string(event) + ", value " + std::to_string(value);
  }
}

// One event of a socket monitor (libzmq: a frame of event number and value, then the endpoint):
// nullopt when none was waiting; event 0 for a malformed one.
struct MonitorEvent {
  std::uint16_t event = 0;
  std::uint32_t value = 0;
};
std::optional<MonitorEvent> readMonitorEvent(zmq::socket_t& monitor, zmq::recv_flags flags) {
  zmq::message_t header, address;
  if (!monitor.recv(header, flags)) return std::nullopt;
  if (header.more()) (void)monitor.recv(address);
  MonitorEvent e;
  if (header.size() >= 6) {
    std::memcpy(&e.event, header.data(), 2);
    std::memcpy(&e.value, static_cast<const char*>(header.data()) + 2, 4);
  }
  return e;
}
}  // namespace

HandshakeResult HandshakeWatch::wait(int timeoutMs, std::string* detail) {
  const auto& clock = util::systemClock();
  std::int64_t deadline = clock.monotonicMs() + timeoutMs;
  for (;;) {
    std::int64_t left = std::max<std::int64_t>(0, deadline - clock.monotonicMs());
    zmq::pollitem_t item{monitor_.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(left));
    if (!(item.revents & ZMQ_POLLIN)) {
      if (clock.monotonicMs() >= deadline) return HandshakeResult::kTimedOut;
      continue;
    }
    auto e = readMonitorEvent(monitor_, zmq::recv_flags::none);
    if (!e || e->event == 0) continue;
    if (e->event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) return HandshakeResult::kSucceeded;
    if (detail) *detail = describeHandshakeFailure(e->event, e->value);
    if (e->event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) return HandshakeResult::kRefused;
    return HandshakeResult::kFailed;
  }
}

ServerHandshakeWatch::ServerHandshakeWatch(zmq::context_t& ctx, zmq::socket_t& socket) : socket_(&socket) {
  std::string endpoint = "inproc://mesh-server-handshake-" + std::to_string(getpid()) + "-" + std::to_string(gMonitorSeq++);
  int rc = zmq_socket_monitor(socket.handle(), endpoint.c_str(),
                              ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL);
  MESH_ASSERT(rc == 0, "zmq_socket_monitor");
  monitor_ = zmq::socket_t(ctx, zmq::socket_type::pair);
  monitor_.connect(endpoint);
}

ServerHandshakeWatch::~ServerHandshakeWatch() { zmq_socket_monitor(socket_->handle(), nullptr, 0); }

ServerHandshakeWatch::Failures ServerHandshakeWatch::drain(std::size_t max) {
  Failures f;
  for (std::size_t i = 0;; ++i) {
    if (i == max) {
      f.more = true;
      break;
    }
    auto e = readMonitorEvent(monitor_, zmq::recv_flags::dontwait);
    if (!e) break;
    if (e->event == 0) continue;
    if (e->event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
      ++f.broken;
      f.last = describeHandshakeFailure(e->event, e->value);
    } else {
      ++f.dropped;
    }
  }
  return f;
}

HandshakeResult probeWithKey(zmq::context_t& ctx, const std::string& endpoint,
                             const crypto::PublicKey& serverKey, const crypto::KeyPair& probeKeys,
                             zmq::socket_type type, int timeoutMs) {
  SocketLimits limits;
  limits.lingerMs = 0;
  zmq::socket_t probe = makeClientSocket(ctx, type, probeKeys, serverKey, limits);
  if (type == zmq::socket_type::sub) probe.set(zmq::sockopt::subscribe, "");
  HandshakeWatch watch(ctx, probe);
  probe.connect(endpoint);
  return watch.wait(timeoutMs);
}

}  // namespace mesh::transport
