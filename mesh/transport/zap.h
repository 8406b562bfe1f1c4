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
#include <functional>
#include <string>
#include <thread>
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
