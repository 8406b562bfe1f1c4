// ZeroMQ sockets with the house defaults, and the checks around CurveZMQ.
//
// Server sockets (nexus): CURVE server, a non-empty ZAP domain and ZMQ_ZAP_ENFORCE_DOMAIN
// (option 93, hidden behind the draft API in Debian's header but compiled into its 4.3.4
// library), so that a missing or dead ZAP handler refuses every peer instead of admitting all.
// Client sockets (spore, mesh CLI): CURVE client pinned to the server's public key.
// Every socket: bounded message size, bounded linger, and bounded queues.
//
// Thread rule: a socket lives and dies on the thread that uses it; the Context is thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "mesh/crypto/keys.h"
#include "mesh/util/result.h"

namespace mesh::transport {

constexpr int kZapEnforceDomain = 93;  // ZMQ_ZAP_ENFORCE_DOMAIN

struct SocketLimits {
  std::int64_t maxMessageBytes = 64ll << 20;
  int lingerMs = 1000;
  int sendHwm = 10000;
  int recvHwm = 10000;
};

// The process's one ZeroMQ context, with ZMQ_ZERO_COPY_RECV off so received frames are
// 8-byte aligned for Cap'n Proto (DESIGN.md section 12), and `ioThreads` I/O threads (where
// libzmq does the Curve encryption; each connection stays on one of them).
zmq::context_t makeContext(int ioThreads = 1);

zmq::socket_t makeServerSocket(zmq::context_t& ctx, zmq::socket_type type,
                               const crypto::KeyPair& serverKeys, const std::string& zapDomain,
                               const SocketLimits& limits);

zmq::socket_t makeClientSocket(zmq::context_t& ctx, zmq::socket_type type,
                               const crypto::KeyPair& ownKeys, const crypto::PublicKey& serverKey,
                               const SocketLimits& limits);

// Binds and returns the endpoint actually bound (resolves "tcp://127.0.0.1:*").
util::Result<std::string> bindSocket(zmq::socket_t& socket, const std::string& endpoint);

// "::ffff:10.0.0.5" -> "10.0.0.5": how a dual-stack socket reports an IPv4 peer, shown as IPv4.
std::string plainAddress(const std::string& address);

// The peer's IP address of a received frame (its "Peer-Address" property), or "".
std::string peerAddress(zmq::message_t& frame);

// The ZAP User-Id of a received body frame (our ZAP handler sets it to the z85 public key).
// Empty when the frame has none (which never happens on a Curve server socket).
std::string userId(zmq::message_t& frame);

enum class HandshakeResult { kSucceeded, kRefused, kFailed, kTimedOut };

// Watches a client socket's handshake: call before connect(), then wait().
class HandshakeWatch {
 public:
  HandshakeWatch(zmq::context_t& ctx, zmq::socket_t& socket);
  ~HandshakeWatch();
  HandshakeWatch(const HandshakeWatch&) = delete;
  HandshakeWatch& operator=(const HandshakeWatch&) = delete;
  // Waits until the first handshake ends or timeoutMs passes.
  HandshakeResult wait(int timeoutMs, std::string* detail = nullptr);
  // Without blocking: the outcome of the latest handshake seen since the last call, if any
  // (kTimedOut means none yet). For an actor that polls many things.
  HandshakeResult check() { return wait(0); }
  // The monitor's socket, for a poll loop: when it is readable, wait(0) has news.
  zmq::socket_t& socket() { return monitor_; }

 private:
  zmq::socket_t* socket_;
  zmq::socket_t monitor_;
  std::string endpoint_;
};

// Watches a server socket for Curve handshakes that fail before ZAP is asked (a peer that pinned
// another server key, or that does not speak CurveZMQ, or hangs up mid-handshake): libzmq tells
// that peer, not the server's application, unless it monitors. ZAP refusals are not counted here.
class ServerHandshakeWatch {
 public:
  ServerHandshakeWatch(zmq::context_t& ctx, zmq::socket_t& socket);
  ~ServerHandshakeWatch();
  ServerHandshakeWatch(const ServerHandshakeWatch&) = delete;
  ServerHandshakeWatch& operator=(const ServerHandshakeWatch&) = delete;
  // Reads the events waiting (at most `max`), without blocking.
  struct Failures {
    std::size_t broken = 0;   // the peer's messages did not decrypt or parse (another server key)
    std::size_t dropped = 0;  // the peer hung up mid-handshake (a port check, a scanner, a timeout)
    std::string last;         // the last broken one, in words
    bool more = false;        // `max` read: more may be waiting
  };
  Failures drain(std::size_t max = 1000);
  zmq::socket_t& socket() { return monitor_; }

 private:
  zmq::socket_t* socket_;
  zmq::socket_t monitor_;
};

// Connects to `endpoint` with a throwaway key and reports whether the server admitted it.
// The nexus calls this on each of its own ports at start-up and refuses to serve if it gets in.
HandshakeResult probeWithKey(zmq::context_t& ctx, const std::string& endpoint,
                             const crypto::PublicKey& serverKey, const crypto::KeyPair& probeKeys,
                             zmq::socket_type type, int timeoutMs);

}  // namespace mesh::transport
