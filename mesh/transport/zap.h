// The ZAP handler: the one place that decides which Curve public keys may connect, and as what.
//
// It runs on its own thread with a REP socket on inproc://zeromq.zap.01, bound (and ready)
// before the constructor returns, so it exists before any server socket is bound. For every
// handshake libzmq asks it, and it asks the Authorizer (which must refuse on any error: an
// exception counts as a refusal). The start-up probe key goes through the same Authorizer, so
// the self-check proves the real decision path, not a special case. An accepted peer's ZAP User-Id is its z85 public key: nodes read identity from
// that, never from a routing id.
//
// Thread rule: the Authorizer runs on the ZAP thread only (it must bring its own resources,
// e.g. its own SQLite connection). The ZapHandler object is owned by the thread that made it.
#pragma once

#include <atomic>
#include <climits>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <zmq.hpp>

#include "mesh/crypto/keys.h"

namespace mesh::transport {

struct ZapRequest {
  std::string domain;     // the server socket's ZAP domain: tells which port
  std::string address;    // peer IP address
  crypto::PublicKey key;  // the client's long-term Curve key
  bool probe = false;     // the key is the start-up self-check's: judge it, but do not record it
};

struct ZapVerdict {
  bool allow = false;
  std::string reason;     // status text for the log
};

using Authorizer = std::function<ZapVerdict(const ZapRequest&)>;

// RefusalGate: how much work refusals of unknown keys may make. Each costs the nexus a
// synchronous write (the key becomes pending) and a log line, and anyone who can reach a port
// can make up keys. Per window of `windowMs`, at most `writes` refusals are recorded and `lines`
// logged, one key at most once per window; the rest are counted. Remembers at most `recentMax`
// keys (it forgets them all when it has more, at a window's start).
// Thread rule: owned by the ZAP thread's Authorizer; not thread-safe (the count is atomic).
class RefusalGate {
 public:
  struct Limits {
    std::int64_t windowMs = 10'000;
    int writes = 100;
    int lines = 20;
    std::size_t recentMax = 4096;
  };
  struct Decision {
    bool record = false;  // write the refusal to the key table
    bool log = false;     // write a log line (only with record)
  };
  RefusalGate() = default;
  explicit RefusalGate(Limits limits) : limits_(limits) {}

  Decision admit(const std::string& key, std::int64_t nowMs);
  // Refusals not logged since the last call (for the next line's "N more"), then zero.
  std::uint64_t takeUnlogged() { return std::exchange(unlogged_, 0); }
  // Refusals neither recorded nor logged so far (any thread may read).
  std::uint64_t unrecorded() const { return unrecorded_.load(); }

 private:
  Limits limits_;
  std::int64_t windowStartMs_ = INT64_MIN;
  int writes_ = 0, lines_ = 0;
  std::uint64_t unlogged_ = 0;
  std::unordered_map<std::string, std::int64_t> recent_;  // key -> when it was last recorded
  std::atomic<std::uint64_t> unrecorded_{0};
};

class ZapHandler {
 public:
  // Binds the ZAP endpoint on a new thread and returns once it is bound.
  ZapHandler(zmq::context_t& ctx, Authorizer authorizer);
  ~ZapHandler();  // stops and joins the thread
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  // The throwaway key pair of the start-up self-check (flagged as `probe` in its requests).
  const crypto::KeyPair& probeKeys() const { return probe_; }
  // Handshakes seen, admitted and refused so far (any thread may read).
  std::uint64_t admitted() const { return admitted_; }
  std::uint64_t refused() const { return refused_; }

 private:
  void run(zmq::socket_t rep, zmq::socket_t control);

  zmq::context_t& ctx_;
  Authorizer authorizer_;
  crypto::KeyPair probe_;
  zmq::socket_t control_;
  std::string controlEndpoint_;
  std::thread thread_;
  std::atomic<std::uint64_t> admitted_{0};
  std::atomic<std::uint64_t> refused_{0};
};

}  // namespace mesh::transport
