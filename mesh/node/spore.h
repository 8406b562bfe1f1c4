// The spore: a worker node. Connects to a nexus (from --nexus, or found by LAN beacon), says
// hello, heartbeats its load, runs the tasks it is assigned on `slots` worker threads through
// the handler registry, and sends results back in batches.
//
// Actor: run() owns the DEALER to the nexus, the SUB for events, the beacon listener and one
// inproc PAIR per worker thread. Workers run handlers (built-ins or programs) and report back by
// message; they share nothing with the loop but the registry's immutable snapshots.
//
// Liveness: the nexus is declared lost after `missedBeats` silent heartbeat intervals; the
// spore then reconnects (the next --nexus endpoint, backoff 1 s doubling to 32 s) and says
// hello again with the tasks it is still running, so the nexus need not run them twice.
#pragma once

#include <atomic>
#include <memory>
#include <zmq.hpp>

#include "mesh/config/config.h"
#include "mesh/exec/registry.h"
#include "mesh/util/result.h"

namespace mesh::node {

class SporeImpl;

class Spore {
 public:
  // `registry` must outlive the Spore.
  static util::Result<std::unique_ptr<Spore>> start(zmq::context_t& ctx, const config::SporeConfig& config,
                                                    exec::HandlerRegistry& registry);
  ~Spore();
  // Works until `stops` is 1 (SIGTERM): then it leaves gently (hands its queued tasks back,
  // lets the running ones finish for --stop-grace, says it is gone; docs/protocol.md "A spore
  // that stops") and returns; at 2 it returns at once.
  void run(const std::atomic<int>& stops);

 private:
  explicit Spore(std::unique_ptr<SporeImpl> impl);
  std::unique_ptr<SporeImpl> impl_;
};

}  // namespace mesh::node
